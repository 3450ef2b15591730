"""Gradients of the LM loss w.r.t. the compressed weights, one backward pass per window (SPEC §6).

- :func:`fisher_information`: per input channel, the mean squared gradient (FWSVD).
- :func:`mean_gradients`: the mean gradient ``G = mean_w ∂loss_w/∂W`` of every member (ZS-SVD's scores).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ngc.arch import Block, arch_spec, find_blocks, split_rows
from ngc.errors import UsageError
from ngc.progress import progress
from ngc.topology.blocks import Member


def fisher_information(model: nn.Module, windows: torch.Tensor, members: Sequence[Member]) -> dict[str, torch.Tensor]:
    """``{member id: F}`` with ``F_j = Σ_i mean_w (∂loss_w/∂W_ij)²``, one backward pass per window.

    Only the compressed weights require gradients during the passes; ``requires_grad`` is restored after.
    """
    modules = {m.module for m in members}
    blocks = [b for b in find_blocks(model) if b.name in modules]
    weights = {b.name: model.get_submodule(b.name).weight for b in blocks}
    saved = {p: p.requires_grad for p in model.parameters()}
    fisher = {m.id: torch.zeros(m.n, dtype=torch.float64) for m in members}
    wanted = {(m.module, m.role): m.id for m in members}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for w in weights.values():
            w.requires_grad_(True)
        for row in progress(windows, desc="fisher (windows)", unit="window"):
            ids = row.unsqueeze(0).to(device)
            model.zero_grad(set_to_none=True)
            model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
            for block in blocks:
                grad = module_weight_grad(model, block)
                for role, g in split_rows(model, block, grad).items():
                    if (block.name, role) in wanted:
                        fisher[wanted[(block.name, role)]] += g.to(torch.float64).pow(2).sum(dim=0).cpu()
    finally:
        model.zero_grad(set_to_none=True)
        for p, flag in saved.items():
            p.requires_grad_(flag)
        model.train(was_training)
    return {key: value / max(len(windows), 1) for key, value in fisher.items()}


def module_weight_grad(model: nn.Module, block: Block) -> torch.Tensor:
    """The gradient of a module's weight in (m, n) layout."""
    weight = model.get_submodule(block.name).weight
    grad = weight.grad if weight.grad is not None else torch.zeros_like(weight)
    return grad.t() if arch_spec(model).conv1d else grad


def mean_gradients(model: nn.Module, windows: torch.Tensor, members: Sequence[Member]) -> dict[str, torch.Tensor]:
    """``{member id: G}`` with ``G`` (m, n) float64 on the host: the mean over windows of ``∂loss_w/∂W``.

    The gradients accumulate in the weights' ``.grad`` over one backward pass per window (only the compressed
    weights require gradients); ``requires_grad`` and the training mode are restored after.
    """
    modules = {m.module for m in members}
    blocks = [b for b in find_blocks(model) if b.name in modules]
    saved = {p: p.requires_grad for p in model.parameters()}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    gradients: dict[str, torch.Tensor] = {}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        not_differentiable = UsageError(
            "the model's loss cannot be differentiated w.r.t. its linear weights",
            hint="zs-svd and --alloc zero-sum|loss (ngc's default) need the weights in floating point: load the model "
            "with --dtype float32, or use --alloc uniform",
        )
        for block in blocks:
            weight = model.get_submodule(block.name).weight
            if not weight.dtype.is_floating_point:
                raise not_differentiable
            weight.requires_grad_(True)
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():  # compress may be called under no_grad
            for row in progress(windows, desc="gradients (windows)", unit="window"):
                ids = row.unsqueeze(0).to(device)
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                if not loss.requires_grad:
                    raise not_differentiable
                loss.backward()
        wanted = {(m.module, m.role): m.id for m in members}
        for block in blocks:
            grad = module_weight_grad(model, block)
            for role, g in split_rows(model, block, grad).items():
                if (block.name, role) in wanted:
                    gradients[wanted[(block.name, role)]] = g.detach().to("cpu", torch.float64) / max(len(windows), 1)
    finally:
        model.zero_grad(set_to_none=True)
        for p, flag in saved.items():
            p.requires_grad_(flag)
        model.train(was_training)
    return gradients
