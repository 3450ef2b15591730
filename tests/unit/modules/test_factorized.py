"""The factorised forward is the dense forward of the rebuilt weight; shared bases compute one message."""

from __future__ import annotations

import torch

from ngc.modules.factorized import FactorizedLinear, GroupBasis


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


def test_members_of_one_group_share_storage_and_the_message():
    basis = make_basis("L0:q+k", 8, 3, 0, readers=2)
    q = fill(FactorizedLinear([basis], [8], ["q"], None), 1)
    k = fill(FactorizedLinear([basis], [4], ["k"], None), 2)
    assert q.bases[0].B is k.bases[0].B
    x = torch.randn(3, 8)
    z = basis.message(x)
    assert basis.message(x) is z  # same tensor, unchanged: reused by the second reader
    assert basis._last is None  # both readers have it: nothing is kept
    z = basis.message(x)
    x.add_(1.0)  # changed in place: recomputed
    assert basis.message(x) is not z
    assert torch.allclose(basis.message(x), x @ basis.B)
    with torch.inference_mode():
        y = torch.randn(3, 8)
        assert basis.message(y) is basis.message(y)


def test_a_forward_keeps_no_message_of_any_layer():
    """Messages live only within their layer: after a forward no basis holds an activation (memory stays flat)."""
    from ngc.api import compress
    from ngc.config import CompressionConfig
    from ngc.data.windows import CalibrationWindows
    from ngc.models.tiny import build_tiny_model

    model = build_tiny_model("llama")
    calib = CalibrationWindows(torch.randint(0, 250, (3, 32), generator=torch.Generator().manual_seed(0)), "r", None, 0)
    compress(model, CompressionConfig(method="ngc", ratio=0.3, sequential=False), calib)
    bases = {id(m): m for m in model.modules() if isinstance(m, GroupBasis)}.values()
    assert {b.group_id.split(":")[1]: b.readers for b in bases}.items() >= {("q+k+v", 3), ("gate+up", 2), ("o", 1)}
    with torch.no_grad():
        model(input_ids=torch.randint(0, 250, (2, 16)))
    assert all(b._last is None for b in bases)
