"""The factorised forward is the dense forward of the rebuilt weight; shared bases compute one message, hold no
activation after their layer, and compile as one graph on every family."""

from __future__ import annotations

import re

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ngc.accounting import account
from ngc.api import compress
from ngc.config import CompressionConfig
from ngc.data.windows import CalibrationWindows
from ngc.models.tiny import build_tiny_model, tiny_families
from ngc.modules.factorized import FactorizedLinear, GroupBasis

# Compiled and eager logits of the float32 tiny models (|logit| < 2) agree to about 1e-7 here; this bound
# leaves room for other CPUs' reduction orders and is still far below any real error of the forward.
LOGIT_ATOL, LOGIT_RTOL = 1e-5, 1e-4


def make_basis(group_id: str, n: int, k: int, seed: int, readers: int = 1) -> GroupBasis:
    basis = GroupBasis(group_id, n, k, readers=readers)
    with torch.no_grad():
        basis.B.copy_(torch.randn(n, k, generator=torch.Generator().manual_seed(seed)))
    return basis


def fill(module: FactorizedLinear, seed: int) -> FactorizedLinear:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for A in module.A:
            A.copy_(torch.randn(A.shape, generator=g))
    return module


def compressed_tiny(family: str, ratio: float = 0.5) -> torch.nn.Module:
    model = build_tiny_model(family).eval()
    calib = CalibrationWindows(torch.randint(0, 250, (3, 32), generator=torch.Generator().manual_seed(0)), "r", None, 0)
    compress(model, CompressionConfig(method="ngc", ratio=ratio, sequential=False, alloc="uniform"), calib)
    return model


def distinct_bases(model: torch.nn.Module) -> list[GroupBasis]:
    return list({id(m): m for m in model.modules() if isinstance(m, GroupBasis)}.values())


def linear_flops(model: torch.nn.Module, ids: torch.Tensor) -> int:
    """Floating-point operations of the matrix products (linears) of one forward."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=ids, use_cache=False)
    counts = counter.get_flop_counts()["Global"]
    return int(sum(v for op, v in counts.items() if str(op).split(".")[1] in ("mm", "addmm")))


def test_forward_equals_the_rebuilt_dense_weight_with_bias_and_fused_order():
    n = 10
    bases = [make_basis("q", n, 3, 0), make_basis("k", n, 4, 1), make_basis("v", n, 2, 2)]
    order = torch.randperm(18, generator=torch.Generator().manual_seed(3)).tolist()
    bias = torch.randn(18)
    module = fill(FactorizedLinear(bases, [6, 6, 6], ["q", "k", "v"], bias, order), 4)
    x = torch.randn(2, 5, n)
    W = module.to_dense()  # (18, n)
    assert torch.allclose(module(x), x @ W.T + bias, atol=1e-5)
    # to_dense honours the original (interleaved) layout: row order[j] of W is row j of the stacked parts
    stacked = torch.cat([A @ b.B.T for A, b in zip(module.A, bases, strict=True)])
    assert torch.equal(W[torch.tensor(order)], stacked)


def test_parts_of_one_module_on_one_basis_compute_the_message_once():
    basis = make_basis("L0:q+k+v", 8, 3, 0, readers=3)
    fused = fill(FactorizedLinear([basis, basis, basis], [8, 4, 4], ["q", "k", "v"], None), 1)
    assert fused.first_reader == (0, 0, 0)
    x = torch.randn(5, 8)
    assert linear_flops_of(fused, x) == 2 * 5 * (8 * 3 + 16 * 3)
    assert torch.allclose(fused(x), x @ fused.to_dense().T, atol=1e-5)


def linear_flops_of(module: torch.nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return int(counter.get_total_flops())


def test_a_scope_shares_the_message_of_one_unchanged_input_and_keeps_nothing_after():
    basis = make_basis("L0:q+k", 8, 3, 0, readers=2)
    q = fill(FactorizedLinear([basis], [8], ["q"], None), 1)
    k = fill(FactorizedLinear([basis], [4], ["k"], None), 2)
    assert q.bases[0].B is k.bases[0].B
    x = torch.randn(3, 8)
    assert basis.message(x) is not basis.message(x)  # no scope: nothing is kept, every call computes
    basis.open_scope()
    z = basis.message(x)
    assert basis.message(x) is z  # same tensor, unchanged: reused
    x.add_(1.0)  # changed in place: recomputed
    assert basis.message(x) is not z and torch.allclose(basis.message(x), x @ basis.B)
    with torch.inference_mode():
        y = torch.randn(3, 8)
        assert basis.message(y) is basis.message(y)
    basis.close_scope()
    assert basis._seen == [] and basis._scopes == 0


def test_an_eager_forward_computes_each_message_once_per_layer_and_keeps_none():
    """The products of a forward are exactly the accounting's MACs (a shared message counted once per layer),
    and after the forward, or a forward that failed inside a layer, no basis holds an activation."""
    model = compressed_tiny("llama", ratio=0.3)
    bases = distinct_bases(model)
    assert {b.group_id.split(":")[1]: b.readers for b in bases}.items() >= {("q+k+v", 3), ("gate+up", 2), ("o", 1)}
    ids = torch.randint(0, 250, (2, 16))
    assert linear_flops(model, ids) == 2 * ids.numel() * account(model).macs_per_token
    assert all(b._seen == [] and b._scopes == 0 for b in bases)
    attention = model.model.layers[0].self_attn
    handle = attention.o_proj.register_forward_pre_hook(lambda *_: (_ for _ in ()).throw(RuntimeError("stop")))
    with pytest.raises(RuntimeError, match="stop"):
        model(input_ids=ids)
    handle.remove()
    assert all(b._seen == [] and b._scopes == 0 for b in bases)


@pytest.mark.parametrize("family", tiny_families())
def test_the_compressed_model_compiles_as_one_graph_with_the_eager_logits(family):
    """Dynamo captures the whole forward (``fullgraph=True`` raises on any graph break) on every family."""
    model = compressed_tiny(family)
    ids = torch.randint(0, 250, (2, 12), generator=torch.Generator().manual_seed(1))
    torch._dynamo.reset()
    with torch.no_grad():
        eager = model(input_ids=ids, use_cache=False).logits
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(compiled, eager, atol=LOGIT_ATOL, rtol=LOGIT_RTOL)
    assert all(b._seen == [] and b._scopes == 0 for b in distinct_bases(model))


def _inductor_products(model: torch.nn.Module, ids: torch.Tensor, freezing: bool) -> tuple[torch.Tensor, int]:
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, options={"freezing": freezing})
    with torch.no_grad():
        out, code = run_and_get_code(compiled, input_ids=ids, use_cache=False)
    return out.logits, len(re.findall(r"extern_kernels\.(?:mm|addmm|bmm)\(", "\n".join(code)))


def test_inductor_with_freezing_merges_the_shared_messages_of_a_layer():
    """Tiny Llama, 2 layers: per layer q|k|v read one basis (1 message + 3 outputs), o (2), gate|up one basis
    (1 + 2), down (2): 11 products, plus the LM head: 23. Without freezing inductor keeps all 29."""
    model = compressed_tiny("llama")
    ids = torch.randint(0, 250, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eager = model(input_ids=ids, use_cache=False).logits
    logits, products = _inductor_products(model, ids, freezing=True)
    torch.testing.assert_close(logits, eager, atol=LOGIT_ATOL, rtol=LOGIT_RTOL)
    assert products == 23


@pytest.mark.slow
@pytest.mark.parametrize("family", tiny_families())
def test_inductor_logits_equal_eager_on_every_family(family):
    model = compressed_tiny(family)
    ids = torch.randint(0, 250, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eager = model(input_ids=ids, use_cache=False).logits
    for freezing in (False, True):
        logits, _ = _inductor_products(model, ids, freezing)
        torch.testing.assert_close(logits, eager, atol=LOGIT_ATOL, rtol=LOGIT_RTOL)
