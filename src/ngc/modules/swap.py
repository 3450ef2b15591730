"""The only code that replaces modules of a model: dense linears -> :class:`FactorizedLinear`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ngc.arch import arch_spec
from ngc.fit.closed_form import GroupFit
from ngc.modules.factorized import FactorizedLinear, GroupBasis, share_messages
from ngc.topology.blocks import Member, output_order
from ngc.topology.groups import Group


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _bias(module: nn.Module) -> torch.Tensor | None:
    bias = getattr(module, "bias", None)
    return bias if isinstance(bias, torch.Tensor) else None


def _reference(module: nn.Module) -> torch.Tensor:
    """A tensor of ``module`` giving the dtype and device of what replaces it (its weight, or its first factor)."""
    weight = getattr(module, "weight", None)
    return weight if isinstance(weight, torch.Tensor) else next(module.parameters())


def factorize(
    model: nn.Module,
    groups: Sequence[Group],
    ranks: Mapping[str, int],
    fits: Mapping[str, GroupFit] | None = None,
    modules: set[str] | None = None,
    bases: dict[str, GroupBasis] | None = None,
) -> dict[str, GroupBasis]:
    """Replace every module whose members are in ``groups`` (or only those in ``modules``).

    With ``fits`` the factors are filled from them; without, the structure is built empty (to load weights
    into). Pass the returned ``bases`` back in when replacing modules in several calls, so that a group's
    basis stays one object. Returns the bases by group id.
    """
    spec = arch_spec(model)
    bases = {} if bases is None else bases
    placement: dict[tuple[str, str], tuple[GroupBasis, torch.Tensor | None]] = {}
    for group in groups:
        fit = fits[group.id] if fits is not None else None
        basis = bases.get(group.id)
        if basis is None:
            reference = _reference(model.get_submodule(group.members[0].module))
            readers = max(Counter((m.layer, m.input_key) for m in group.members).values())
            basis = GroupBasis(
                group.id, group.n, ranks[group.id], readers=readers, dtype=reference.dtype, device=reference.device
            )
            if fit is not None:
                with torch.no_grad():
                    basis.B.copy_(fit.B)
            bases[group.id] = basis
        for index, member in enumerate(group.members):
            placement[(member.module, member.role)] = (basis, fit.A[index] if fit is not None else None)
    by_module: dict[str, list[Member]] = {}
    for group in groups:
        for member in group.members:
            by_module.setdefault(member.module, []).append(member)
    for name, members in by_module.items():
        if modules is not None and name not in modules:
            continue
        old = model.get_submodule(name)
        layer = members[0].layer
        role_order = next(r for suffix, r in spec.blocks.items() if name == f"{spec.layers}.{layer}.{suffix}")
        ordered = sorted(members, key=lambda m: role_order.index(m.role))
        parts = [placement[(m.module, m.role)] for m in ordered]
        new = FactorizedLinear(
            [basis for basis, _ in parts],
            [m.m for m in ordered],
            [m.role for m in ordered],
            _bias(old),
            output_order(model, name) if len(ordered) > 1 else None,
        )
        if fits is not None:
            with torch.no_grad():
                for A, (_, fitted) in zip(new.A, parts, strict=True):
                    A.copy_(fitted)
        new.to(device=_reference(old).device)
        _set_submodule(model, name, new)
    share_messages(model)  # siblings that read one input compute its message once (eager)
    return bases


def densify(model: nn.Module) -> int:
    """Replace every :class:`FactorizedLinear` by a dense module of the family's kind holding ``A Bᵀ``.

    For tools that cannot load factorised modules; the result has the dense parameter count again. Returns the
    number of modules replaced.
    """
    conv1d = arch_spec(model).conv1d
    names = [name for name, module in model.named_modules() if isinstance(module, FactorizedLinear)]
    for name in names:
        module = model.get_submodule(name)
        W = module.to_dense().detach()  # (out, in)
        bias = module.bias
        if conv1d:
            from transformers.pytorch_utils import Conv1D

            dense: nn.Module = Conv1D(module.out_features, module.in_features)
            dense.weight = nn.Parameter(W.T.contiguous())
            dense.bias = nn.Parameter(bias.detach().clone() if bias is not None else torch.zeros(module.out_features))
        else:
            dense = nn.Linear(module.in_features, module.out_features, bias=bias is not None)
            dense.weight = nn.Parameter(W.contiguous())
            if bias is not None:
                dense.bias = nn.Parameter(bias.detach().clone())
        _set_submodule(model, name, dense.to(device=W.device, dtype=W.dtype))
    return len(names)
