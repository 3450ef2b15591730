"""Groups and the topology families of SPEC §2.

A group shares one input-state matrix ``B_G`` among its members, so every member must read inputs of the same
width. A topology is an ordered tuple of groups that covers every selected member exactly once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ngc.errors import UsageError
from ngc.topology.blocks import Member


@dataclass(frozen=True)
class Group:
    members: tuple[Member, ...]

    def __post_init__(self) -> None:
        widths = {member.n for member in self.members}
        if not self.members or len(widths) != 1:
            raise UsageError(
                f"group {[m.id for m in self.members]} mixes input widths {sorted(widths)}",
                hint="a group's members must read inputs of the same width (down reads d_ff; group it only with down)",
            )

    @property
    def id(self) -> str:
        """``L3:q+k+v`` for one layer, ``L2-3:gate+up`` across layers."""
        layers = sorted({m.layer for m in self.members})
        span = f"L{layers[0]}" if len(layers) == 1 else f"L{layers[0]}-{layers[-1]}"
        roles = list(dict.fromkeys(m.role for m in self.members))
        return f"{span}:{'+'.join(roles)}"

    @property
    def n(self) -> int:
        return self.members[0].n

    @property
    def m_total(self) -> int:
        return sum(m.m for m in self.members)

    @property
    def dense_params(self) -> int:
        return self.m_total * self.n

    def params_at_rank(self, k: int) -> int:
        """Stored parameters of the factorised group: one shared B (n x k) and each member's A (m_s x k)."""
        return k * (self.m_total + self.n)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted({m.layer for m in self.members}))


def per_matrix(members: Sequence[Member]) -> tuple[Group, ...]:
    """Every member alone: the SVD-LLM structure."""
    return tuple(Group((m,)) for m in members)


def intra(members: Sequence[Member]) -> tuple[Group, ...]:
    """Members of one layer that read the same activation share a group (q+k+v, gate+up); others alone."""
    by_input: dict[str, list[Member]] = {}
    for member in members:
        by_input.setdefault(member.input_key, []).append(member)
    return tuple(Group(tuple(group)) for group in by_input.values())


def cross_layer(members: Sequence[Member], span: int, roles: Sequence[str] | None = None) -> tuple[Group, ...]:
    """The same role across ``span`` adjacent layers (layers 0..span-1, span..2span-1, ...) shares a group.

    Roles outside ``roles`` (default: all) stay per-matrix. This is the Basis Sharing structure.
    """
    if span < 1:
        raise UsageError(f"cross-layer span must be at least 1, got {span}", hint="use cross-2, cross-3, ...")
    shared = set(roles) if roles is not None else {m.role for m in members}
    buckets: dict[tuple[str, int], list[Member]] = {}
    for member in members:
        key = (member.role, member.layer // span) if member.role in shared else (member.id, -1)
        buckets.setdefault(key, []).append(member)
    groups = [Group(tuple(bucket)) for bucket in buckets.values()]
    return tuple(sorted(groups, key=lambda g: (g.layers[-1], g.layers[0], _first_index(members, g))))


def _first_index(members: Sequence[Member], group: Group) -> int:
    return members.index(group.members[0])


BASIS_SHARING_ROLES = ("q", "k", "v", "gate", "up")


def basis_sharing(members: Sequence[Member]) -> tuple[Group, ...]:
    """Basis Sharing (SPEC §6): q, k, v, gate, up shared across 2 adjacent layers; o and down per-matrix."""
    return cross_layer(members, 2, BASIS_SHARING_ROLES)


def intra_cross(members: Sequence[Member], span: int) -> tuple[Group, ...]:
    """Mixed topology: the intra-layer groups (q+k+v, gate+up, o, down) shared across ``span`` adjacent layers."""
    if span < 1:
        raise UsageError(f"cross-layer span must be at least 1, got {span}", hint="use intra-cross-2, ...")
    buckets: dict[tuple[str, int], list[Member]] = {}
    for member in members:
        shared = member.input_key.split(":", 1)[1]  # e.g. "q+k+v"
        buckets.setdefault((shared, member.layer // span), []).append(member)
    groups = [Group(tuple(bucket)) for bucket in buckets.values()]
    return tuple(sorted(groups, key=lambda g: (g.layers[-1], g.layers[0], _first_index(members, g))))


TOPOLOGIES: dict[str, Callable[[Sequence[Member]], tuple[Group, ...]]] = {
    "per-matrix": per_matrix,
    "intra": intra,
    "basis-sharing": basis_sharing,
}
_CROSS = re.compile(r"(intra-)?cross-(\d+)")


def topology_names() -> str:
    return ", ".join([*TOPOLOGIES, "cross-N", "intra-cross-N (N = 2, 3, ...)", "auto"])


def family_groups(name: str, members: Sequence[Member]) -> tuple[Group, ...]:
    """The groups of one named family over ``members`` (no cover check)."""
    if name in TOPOLOGIES:
        return TOPOLOGIES[name](members)
    if match := _CROSS.fullmatch(name):
        span = int(match.group(2))
        return intra_cross(members, span) if match.group(1) else cross_layer(members, span)
    raise UsageError(f"unknown topology {name!r}", hint=f"topologies: {topology_names()}; or rules / a YAML file")


def build_topology(name: str, members: Sequence[Member]) -> tuple[Group, ...]:
    """The groups of a topology over ``members``: a family name, rules, or a YAML file (see ``parse``)."""
    from ngc.topology.parse import parse_topology

    groups = parse_topology(name, members)
    check_cover(groups, members)
    return groups


def check_cover(groups: Sequence[Group], members: Sequence[Member]) -> None:
    """Every member in exactly one group, and nothing else."""
    seen: dict[Member, str] = {}
    for group in groups:
        for member in group.members:
            if member in seen:
                raise UsageError(
                    f"{member.id} ({member.module}) is in two groups: {seen[member]} and {group.id}",
                    hint="each block may belong to at most one group",
                )
            seen[member] = group.id
    missing = [m.id for m in members if m not in seen]
    extra = [m.id for m in seen if m not in set(members)]
    if missing or extra:
        raise UsageError(f"topology does not cover the selected blocks: missing {missing}, unknown {extra}")
