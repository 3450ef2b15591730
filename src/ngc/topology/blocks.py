"""Members: one role of one decoder layer, the unit a topology groups (SPEC §2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ngc.arch import ROLES, arch_spec, block_at, find_blocks, input_key, split_rows
from ngc.errors import UsageError


@dataclass(frozen=True)
class Member:
    """One weight matrix ``W ∈ R^{m×n}`` a group may compress: ``role`` of the module ``module`` in ``layer``."""

    module: str  # qualified module path, e.g. "model.layers.3.self_attn.q_proj"
    role: str
    layer: int
    m: int  # output width of this role
    n: int  # input width
    input_key: str  # members with the same key read the same activation, e.g. "L3:q+k+v"

    @property
    def id(self) -> str:
        return f"L{self.layer}.{self.role}"


def parse_roles(roles: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """``"q,k,v"`` / ``("q", "k")`` / ``None`` (all seven) -> a tuple of roles in canonical order."""
    if roles is None:
        return ROLES
    names = [r.strip() for r in roles.split(",")] if isinstance(roles, str) else [str(r).strip() for r in roles]
    names = [r for r in names if r]
    unknown = sorted(set(names) - set(ROLES))
    if unknown or not names:
        raise UsageError(f"unknown role(s) {unknown or names}", hint=f"roles are {', '.join(ROLES)}, comma-separated")
    return tuple(r for r in ROLES if r in names)


def find_members(model: nn.Module, roles: tuple[str, ...] = ROLES) -> list[Member]:
    """Every member of the selected roles, layer by layer, in the table's module order.

    A fused module (GPT-2 ``c_attn``, GPT-NeoX ``query_key_value``) is replaced as a whole, so it is compressed
    only when all of its roles are selected.
    """
    spec = arch_spec(model)
    members: list[Member] = []
    for block in find_blocks(model, roles):
        missing = [r for r in block.roles if r not in roles]
        if missing:
            raise UsageError(
                f"{spec.family} computes {'+'.join(block.roles)} in one module ({block.name}); "
                f"roles {', '.join(missing)} were not selected",
                hint=f"select all of {', '.join(block.roles)} or none of them",
            )
        index_rows = split_rows(model, block, _row_index(block.out_features))
        for role in block.roles:
            members.append(
                Member(
                    block.name,
                    role,
                    block.layer,
                    int(index_rows[role].numel()),
                    block.in_features,
                    input_key(model, block.layer, role),
                )
            )
    return members


def output_order(model: nn.Module, module: str) -> list[int] | None:
    """For a fused module: the original output row of each row of its roles stacked in order; ``None`` if equal."""
    block = block_at(model, module)
    rows = split_rows(model, block, _row_index(block.out_features))
    stacked = [int(i) for role in block.roles for i in rows[role].tolist()]
    return None if stacked == list(range(block.out_features)) else stacked


def _row_index(m: int) -> torch.Tensor:
    return torch.arange(m)
