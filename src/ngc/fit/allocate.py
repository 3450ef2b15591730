"""Rank allocation (SPEC §3)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from ngc.topology.groups import Group


def uniform_rank(group: Group, ratio_removed: float) -> int:
    """``k_G = floor((1−R) Σ_s m_s n / (Σ_s m_s + n))``: every group keeps the same fraction of its parameters."""
    return math.floor((1.0 - ratio_removed) * group.dense_params / (group.m_total + group.n) + 1e-9)


def round_ranks(ranks: Mapping[str, int], multiple: int) -> dict[str, int]:
    """Every rank rounded down to a multiple of ``multiple`` (a rank below it stays): GPU matrix kernels run far
    faster on aligned shapes. Rounding only removes parameters, so the ratio removed can only grow."""
    if multiple <= 1:
        return dict(ranks)
    return {gid: rank if rank < multiple else rank // multiple * multiple for gid, rank in ranks.items()}


def break_even_rank(group: Group) -> int:
    """The largest rank that stores no more than the dense weights: ``floor(Σm n / (Σm + n))``."""
    return group.dense_params // (group.m_total + group.n)


def greedy_ranks(
    groups: Sequence[Group],
    spectra: Mapping[str, torch.Tensor],
    ratio_removed: float,
    normalise: bool = True,
    floor: float = 0.0,
) -> dict[str, int]:
    """Ranks that minimise ``Σ_G Σ_{i>k_G} σ_{G,i}² / ‖σ_G‖²`` for the uniform allocation's parameter total.

    Each rank unit of G costs ``Σm + n`` parameters and gains ``σ_{G,k}² / ‖σ_G‖²`` (``normalise``; else the
    absolute ``σ_{G,k}²``, the block's output error energy); gains fall with k, so taking units in order of gain
    per parameter is exact for this separable objective (SPEC §4). Every group keeps at least ``floor`` times
    its uniform rank (and rank 1), and at most its break-even rank.
    """
    uniform = {group.id: uniform_rank(group, ratio_removed) for group in groups}
    budget = sum(group.params_at_rank(uniform[group.id]) for group in groups)
    ranks = {group.id: max(1, math.floor(floor * uniform[group.id])) for group in groups}
    spent = sum(group.params_at_rank(ranks[group.id]) for group in groups)
    units: list[tuple[float, int, int, str, int]] = []
    for index, group in enumerate(groups):
        energy = spectra[group.id].to(torch.float64).pow(2)
        total = (float(energy.sum()) or 1.0) if normalise else 1.0
        cost = group.m_total + group.n
        for k in range(ranks[group.id] + 1, min(break_even_rank(group), energy.numel()) + 1):
            units.append((-float(energy[k - 1]) / total / cost, index, k, group.id, cost))
    units.sort()
    for _score, _index, k, group_id, cost in units:
        if ranks[group_id] == k - 1 and spent + cost <= budget:
            ranks[group_id] = k
            spent += cost
    return ranks
