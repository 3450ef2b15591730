"""Block-wise refinement (SPEC §5, AA-SVD): a few Adam steps on one decoder layer's factors so that the layer,
fed what the compressed prefix produces (``X̂``), reproduces the dense layer's output on the dense inputs (``X``).

It captures what the per-linear closed form cannot: the softmax and gating between a layer's linears. Only the
factors are trained (every ``A`` of the layer's :class:`FactorizedLinear` modules and the bases owned by the
layer; a basis shared with other layers stays fixed, since those layers have already run or not yet). The loss
is the output MSE normalised by the dense outputs' energy, ``Σ‖f̂(X̂) − f(X)‖² / Σ‖f(X)‖²``, measured before and
after on the first ``MEASURED_BATCHES`` calibration batches (two extra passes of the layer over all of them would
cost as much as the steps); one step takes one batch, in turn. When the steps do not lower the measured loss the
factors are restored, so refinement does not make a layer worse on the batches it is measured on.

Step size: as the local refinement, relative: each factor tensor moves by about ``lr`` times its mean absolute
entry per step (Adam's step is about its lr whatever the gradient's scale). AA-SVD's recipe is 25 steps.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ngc.calib.layers import run_layer
from ngc.modules.factorized import FactorizedLinear

#: calibration batches the loss is measured on before and after the steps
MEASURED_BATCHES = 8


@dataclass(frozen=True)
class BlockRefinement:
    """What refining one layer did: normalised output MSE before and after, and what was trained."""

    before: float
    after: float
    steps: int
    parameters: int  # trained parameters (factors of this layer)
    kept: bool  # False: the steps did not lower the loss and the factors were restored
    measured_batches: int = 0  # batches the two losses are measured on

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def layer_factors(layer: nn.Module, shared: Collection[str] = ()) -> list[nn.Parameter]:
    """The factors of ``layer`` to train: every ``A``, and each basis ``B`` whose group is not in ``shared``."""
    params: dict[int, nn.Parameter] = {}
    for module in layer.modules():
        if not isinstance(module, FactorizedLinear):
            continue
        for A in module.A:
            params.setdefault(id(A), A)
        for basis in module.bases:
            if basis.group_id not in shared:
                params.setdefault(id(basis.B), basis.B)
    return list(params.values())


Batch = Callable[[int], torch.Tensor]


def _normalised_mse(
    layer: nn.Module, inputs: Batch, targets: Batch, kwargs: Sequence[dict[str, Any]], n_batches: int
) -> float:
    with torch.no_grad():
        error = energy = 0.0
        for b in range(n_batches):
            target = targets(b)
            error += float((run_layer(layer, inputs(b), kwargs[b]) - target).double().pow(2).sum())
            energy += float(target.double().pow(2).sum())
    return error / energy if energy > 0 else error


def refine_block(
    layer: nn.Module,
    params: Sequence[nn.Parameter],
    inputs: Batch,
    targets: Batch,
    kwargs: Sequence[dict[str, Any]],
    steps: int,
    lr: float,
) -> BlockRefinement:
    """Adam on ``params`` (factors of ``layer``) for ``steps`` steps of one batch each (module docstring).

    ``inputs(b)``: batch b of the compressed stream entering the layer; ``targets(b)``: the dense layer's output
    on the dense stream; ``kwargs[b]``: the layer's other arguments. Runs with gradients on whatever the caller's
    mode; every other parameter of the layer is frozen during the steps and restored after.
    """
    n_batches = len(kwargs)
    measured = min(n_batches, MEASURED_BATCHES)
    before = _normalised_mse(layer, inputs, targets, kwargs, measured)
    if not params or steps == 0 or n_batches == 0:
        return BlockRefinement(before, before, 0, 0, False, measured)
    saved = [p.detach().clone() for p in params]
    flags = {p: p.requires_grad for p in layer.parameters()}
    trained = {id(p) for p in params}
    optimizer = torch.optim.Adam([{"params": [p], "lr": lr * (float(p.detach().abs().mean()) or 1.0)} for p in params])
    try:
        for p in layer.parameters():
            p.requires_grad_(id(p) in trained)
        with torch.enable_grad():  # the pipeline runs under no_grad
            for step in range(steps):
                b = step % n_batches
                target = targets(b)
                optimizer.zero_grad(set_to_none=True)
                out = run_layer(layer, inputs(b), kwargs[b])
                ((out - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-30)).backward()
                optimizer.step()
    finally:
        optimizer.zero_grad(set_to_none=True)
        for p, flag in flags.items():
            p.requires_grad_(flag)
    after = _normalised_mse(layer, inputs, targets, kwargs, measured)
    kept = after < before
    if not kept:
        with torch.no_grad():
            for p, value in zip(params, saved, strict=True):
                p.copy_(value)
        after = before
    return BlockRefinement(before, after, steps, sum(p.numel() for p in params), kept, measured)
