"""int8 factors (torchao's int8 weight-only, one scale per output row): the quantization error stays within its
bound, the forward is the dense forward of the dequantized factors, a shared basis stays one tensor, the
accounting counts one byte per factor entry, the float path is untouched, and the int8 forward compiles."""

from __future__ import annotations

import copy
import subprocess
import sys
from importlib.util import find_spec

import pytest
import torch
import torch.nn.functional as F

from ngc.accounting import account
from ngc.api import compress
from ngc.arch import decoder_layers
from ngc.config import CompressionConfig
from ngc.data.windows import CalibrationWindows
from ngc.errors import UsageError
from ngc.models.tiny import build_tiny_model, tiny_families
from ngc.modules import int8
from ngc.modules.factorized import FactorizedLinear, GroupBasis
from ngc.modules.int8 import Int8Factor, TorchaoMissingError, check_int8_support, factor_dtype_of, quantize_factors

needs_torchao = pytest.mark.skipif(find_spec("torchao") is None, reason="torchao is not installed (ngc[int8])")

# Float rounding of the products themselves (float32, inner sizes <= 64 here): far below one int8 step.
FLOAT_SLACK = 1e-5

# Whole tiny models (2 layers, 2 int8 products per linear, every error compounding through the residual
# stream): the largest logit moved by 0.5 % to 4.5 % of the largest |logit| when measured on every family.
# One int8 step is 1/127.5 of a row's largest entry (<= 0.4 % error per entry, half a step); 10 % bounds the
# compounded error with room for other CPUs, and is still far below what a wrong scale or orientation gives.
LOGIT_RELATIVE = 0.1


def windows(seed: int = 0) -> CalibrationWindows:
    return CalibrationWindows(
        torch.randint(0, 250, (3, 40), generator=torch.Generator().manual_seed(seed)), "r", None, 0
    )


def compressed(family: str = "llama", method: str = "ngc", ratio: float = 0.5) -> torch.nn.Module:
    model = build_tiny_model(family).eval()
    compress(model, CompressionConfig(method=method, ratio=ratio, sequential=False), windows())
    return model


def logits(model: torch.nn.Module, seed: int = 3) -> torch.Tensor:
    ids = torch.randint(0, 250, (2, 16), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def half_step_bound(factor: Int8Factor, x: torch.Tensor) -> torch.Tensor:
    """Worst case of |x Ŵᵀ - x Wᵀ| per output: each entry is off by at most half its row's step (scale / 2)."""
    return x.abs().sum(-1, keepdim=True) * factor.scale.reshape(-1) / 2


@needs_torchao
def test_one_factor_is_within_half_a_step_per_row():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(24, 40, generator=g) * torch.logspace(-2, 1, 24).unsqueeze(1)  # rows of very different size
    factor = Int8Factor.from_float(W)
    assert factor.qdata.dtype == torch.int8 and factor.qdata.abs().max() <= 127
    assert factor.scale.shape == (24, 1) and factor.scale.dtype == torch.float32
    # symmetric: torchao spreads the row's largest |entry| over half the int8 range, (127 - -128) / 2 steps
    torch.testing.assert_close(factor.scale.reshape(-1), W.abs().amax(1) / 127.5, rtol=1e-6, atol=0)
    assert ((factor.dequantize() - W).abs() <= factor.scale / 2 + 1e-6).all()  # the largest entry: exactly half a step
    x = torch.randn(3, 5, 40, generator=g)
    error = (factor(x) - F.linear(x, W)).abs()
    assert (error <= half_step_bound(factor, x) + FLOAT_SLACK).all()
    assert torch.allclose(factor(x), F.linear(x, factor.dequantize()), atol=FLOAT_SLACK)


@needs_torchao
@pytest.mark.parametrize("shape", [(64, 1), (1, 64)])
def test_a_rank_one_factor_is_quantized_per_row_like_any_other(shape):
    """A loss allocation can leave rank 1: a (out, 1) factor, which torchao's per-row path alone cannot quantize."""
    W = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    factor = Int8Factor.from_float(W)
    assert factor.qdata.shape == shape and factor.scale.shape == (shape[0], 1)
    torch.testing.assert_close(factor.scale.reshape(-1), W.abs().amax(1) / 127.5, rtol=1e-6, atol=0)
    assert ((factor.dequantize() - W).abs() <= factor.scale / 2 + 1e-6).all()
    x = torch.randn(3, shape[1], generator=torch.Generator().manual_seed(3))
    assert torch.allclose(factor(x), F.linear(x, factor.dequantize()), atol=FLOAT_SLACK)


@needs_torchao
def test_a_module_of_shared_bases_is_within_the_propagated_bound_and_is_its_dequantized_dense_forward():
    g = torch.Generator().manual_seed(1)
    n = 16
    shared, other = GroupBasis("q+k", n, 5), GroupBasis("v", n, 3)
    with torch.no_grad():
        shared.B.copy_(torch.randn(n, 5, generator=g))
        other.B.copy_(torch.randn(n, 3, generator=g))
    order = torch.randperm(18, generator=g).tolist()
    module = FactorizedLinear([shared, shared, other], [6, 6, 6], ["q", "k", "v"], torch.randn(18, generator=g), order)
    with torch.no_grad():
        for A in module.A:
            A.copy_(torch.randn(A.shape, generator=g))
    x = torch.randn(4, n, generator=g)
    with torch.no_grad():
        exact = module(x)
        float_A = [A.detach().clone() for A in module.A]
        z = [x @ shared.B, x @ shared.B, x @ other.B]
        assert quantize_factors(module) == 2 + 3
        assert module.int8 and shared.int8 and module.bases[0] is module.bases[1] is shared
        approx = module(x)
        # |ŷ - y| <= |Â| |ẑ - z| + |Â - A| |z|, with |ẑ - z| and |Â - A| at most half a step of their rows
        bounds = []
        for A, A_float, basis, z_part in zip(module.A, float_A, module.bases, z, strict=True):
            z_bound = half_step_bound(basis.Bt, x)
            A_hat = A.dequantize()
            assert ((A_hat - A_float).abs() <= A.scale / 2 + 1e-6).all()
            bounds.append(z_bound @ A_hat.abs().T + half_step_bound(A, z_part))
        bound = torch.cat(bounds, -1).index_select(-1, module.output_index)
        assert ((approx - exact).abs() <= bound + FLOAT_SLACK).all()
        torch.testing.assert_close(approx, x @ module.to_dense().T + module.bias, atol=FLOAT_SLACK, rtol=0)


@needs_torchao
@pytest.mark.parametrize("family", tiny_families())
def test_int8_logits_are_close_to_float_and_every_module_is_its_dequantized_dense_forward(family):
    model = compressed(family, "basis-sharing" if family == "gpt2" else "ngc")
    reference = logits(model)
    quantize_factors(model)
    assert factor_dtype_of(model) == "int8"
    error = (logits(model) - reference).abs().max()
    assert error <= LOGIT_RELATIVE * reference.abs().max(), float(error)
    g = torch.Generator().manual_seed(5)
    for module in model.modules():
        if isinstance(module, FactorizedLinear):
            x = torch.randn(3, module.in_features, generator=g)
            dense = x @ module.to_dense().T + (module.bias if module.bias is not None else 0)
            with torch.no_grad():
                torch.testing.assert_close(module(x), dense, atol=1e-5, rtol=1e-5)


@needs_torchao
def test_a_shared_basis_stays_one_int8_tensor():
    model = compressed("llama", "basis-sharing", 0.3)
    quantize_factors(model)
    layers = decoder_layers(model)
    first, second = layers[0].self_attn.q_proj.bases[0], layers[1].self_attn.q_proj.bases[0]
    assert first is second and first.int8
    assert "B" not in first._parameters and first.Bt.qdata.shape == (first.rank, first.n)
    parameters = {id(p) for p in model.parameters()}
    assert len(parameters) == len(list(model.parameters()))  # every tensor once, the shared basis included


@needs_torchao
def test_accounting_counts_one_byte_per_factor_entry_and_scales_as_bytes_only():
    model = compressed("qwen3", "ngc")
    before = account(model)
    bases = {id(m): m for m in model.modules() if isinstance(m, GroupBasis)}.values()
    entries = sum(b.B.numel() for b in bases) + sum(
        A.numel() for m in model.modules() if isinstance(m, FactorizedLinear) for A in m.A
    )
    quantize_factors(model)
    after = account(model)
    factors = list({id(m): m for m in model.modules() if isinstance(m, Int8Factor)}.values())
    assert sum(f.qdata.numel() for f in factors) == entries
    rows = sum(f.scale.numel() for f in factors)
    assert after.decoder_linear_params_kept == before.decoder_linear_params_kept
    assert after.model_params_kept == before.model_params_kept and after.model_params_dense == before.model_params_dense
    assert (after.macs_per_token, after.ratio_removed) == (before.macs_per_token, before.ratio_removed)
    assert after.stored_bytes == before.stored_bytes - 4 * entries + entries + 4 * rows
    assert [g.kept_params for g in after.groups] == [g.kept_params for g in before.groups]
    assert model.ngc_compression.accounting == after  # the compression record follows


@needs_torchao
def test_the_float_path_is_untouched_and_quantizing_twice_changes_nothing():
    model = compressed("llama", "ngc")
    module = decoder_layers(model)[0].mlp.down_proj
    x = torch.randn(2, 3, module.in_features)
    with torch.no_grad():
        assert torch.equal(module(x), (x @ module.bases[0].B) @ module.A[0].T)  # the float code, bit for bit
    float_logits = logits(model)
    quantized = copy.deepcopy(model)
    quantize_factors(quantized)
    assert factor_dtype_of(model) == "float" and torch.equal(logits(model), float_logits)
    once = logits(quantized)
    assert quantize_factors(quantized) == 0 and torch.equal(logits(quantized), once)


@needs_torchao
def test_bfloat16_factors_keep_bfloat16_scales():
    model = compressed("llama", "ngc").to(torch.bfloat16)
    reference = logits(model).float()
    quantize_factors(model)
    assert {f.scale.dtype for f in model.modules() if isinstance(f, Int8Factor)} == {torch.bfloat16}
    out = logits(model)
    assert out.dtype == torch.bfloat16
    assert (out.float() - reference).abs().max() <= LOGIT_RELATIVE * reference.abs().max()


@needs_torchao
def test_the_int8_forward_compiles_as_one_graph_with_the_eager_logits():
    model = compressed("llama", "ngc")
    quantize_factors(model)
    eager = logits(model)
    torch._dynamo.reset()
    ids = torch.randint(0, 250, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=1e-6)


@needs_torchao
@pytest.mark.slow
def test_the_int8_forward_compiles_with_inductor_and_freezing():
    from ngc.eval.speed import compile_model

    model = compressed("gpt_neox", "ngc")
    quantize_factors(model)
    eager = logits(model)
    torch._dynamo.reset()
    ids = torch.randint(0, 250, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        compiled = compile_model(model)(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-4)


@needs_torchao
def test_kernels_are_probed_before_any_work():
    check_int8_support("cpu", (torch.float32, torch.bfloat16, torch.float16))
    with pytest.raises(UsageError, match="do not run in float64 on cpu") as caught:
        check_int8_support("cpu", (torch.float64,))
    assert "--factor-dtype float" in caught.value.hint


def without_torchao(monkeypatch) -> None:
    """This process as if torchao were not installed."""
    monkeypatch.setattr(int8, "_int8_tensor", None)
    for name in ("torchao", "torchao.quantization"):
        monkeypatch.setitem(sys.modules, name, None)


def test_without_torchao_int8_is_refused_with_the_install_line(monkeypatch):
    without_torchao(monkeypatch)
    model = build_tiny_model("llama")
    with pytest.raises(TorchaoMissingError, match="need torchao") as caught:
        quantize_factors(model)
    assert "pip install 'ngc[int8]'" in caught.value.hint and caught.value.exit_code == 2
    with pytest.raises(TorchaoMissingError):
        check_int8_support("cpu", (torch.float32,))
    assert factor_dtype_of(model) == "float"  # nothing else needs it


def test_importing_ngc_modules_does_not_import_torchao():
    code = (
        "import sys, ngc.modules.int8, ngc.modules.factorized, ngc.modules.swap, ngc.accounting\n"
        "print('torchao' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
