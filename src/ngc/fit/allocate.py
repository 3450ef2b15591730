"""Rank allocation (SPEC §3)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from ngc.fit.whiten import NumericalError
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


def v2_ratios(losses: Sequence[float], ratio_removed: float, highest: Sequence[float]) -> list[float]:
    """SVD-LLM V2's removed fractions of the matrices of one role: ``R_i = |G| R s_i / Σ_j s_j``, ``s_i = 1/log L_i``.

    ``L_i`` is matrix i's raw Frobenius output error at the uniform ratio (a larger loss: a smaller ``s_i``, so
    less is removed). A fraction outside ``[0, highest_i]`` (``highest_i``: what keeps rank 1) is clipped and
    the rest are rescaled so that the fractions still average to ``R``.
    """
    if any(loss <= 1.0 for loss in losses):
        raise NumericalError(
            f"SVD-LLM V2's allocation needs every output error above 1 (1/log L), got min {min(losses):.3g}",
            hint="the errors are sums over calibration tokens: use more or longer windows, or --alloc uniform",
        )
    s = [1.0 / math.log(loss) for loss in losses]
    total = len(s) * ratio_removed
    ratios = [0.0] * len(s)
    fixed: dict[int, float] = {}
    for _ in range(len(s) + 1):
        free = [i for i in range(len(s)) if i not in fixed]
        weight = sum(s[i] for i in free)
        left = total - sum(fixed.values())
        for i, value in fixed.items():
            ratios[i] = value
        for i in free:
            ratios[i] = left * s[i] / weight if weight > 0 else 0.0
        clipped = {i: min(max(ratios[i], 0.0), highest[i]) for i in free if not 0.0 <= ratios[i] <= highest[i]}
        if not clipped:
            break
        fixed.update(clipped)
    return ratios


def v2_ranks(
    groups: Sequence[Group], losses: Mapping[str, float], ratio_removed: float
) -> tuple[dict[str, int], list[str]]:
    """Ranks from :func:`v2_ratios`, computed within each role (groups keyed by their members' roles).

    A role with an output error at or below 1 (where ``1/log L`` is undefined: few calibration tokens, tiny
    weights) keeps the uniform ratio; those roles are returned second, to be reported.
    """
    uniform: list[str] = []
    by_role: dict[tuple[str, ...], list[Group]] = {}
    for group in groups:
        by_role.setdefault(tuple(dict.fromkeys(m.role for m in group.members)), []).append(group)
    ranks: dict[str, int] = {}
    for members in by_role.values():
        highest = [1.0 - (group.m_total + group.n) / group.dense_params for group in members]
        try:
            ratios = v2_ratios([losses[g.id] for g in members], ratio_removed, highest)
        except NumericalError:
            ratios = [ratio_removed] * len(members)
            uniform.append("+".join(dict.fromkeys(m.role for m in members[0].members)))
        for group, ratio in zip(members, ratios, strict=True):
            ranks[group.id] = min(max(uniform_rank(group, ratio), 1), break_even_rank(group))
    return ranks, uniform
