"""ZS-SVD's component scores and its zero-sum global selection (SPEC §6), for groups of any size.

Score. With ``W S = U Σ Vᵀ`` (S the whitening factor, ``C = S Sᵀ``), dropping component i changes W by
``−σ_i u_i v_iᵀ S⁻¹``, so to first order the calibration loss changes by
``ΔL_i ≈ ⟨G, −σ_i u_i v_iᵀ S⁻¹⟩ = −σ_i u_iᵀ (G S⁻ᵀ) v_i`` (G: mean loss gradient w.r.t. W). For a group the
stacked weights and gradients of its members are scored together.

Selection. Each group drops its components in ascending σ (the truncation stays the closed-form optimum of
§4), so a group offers one candidate at a time: its smallest remaining component. Candidates with ``ΔL < 0``
and ``ΔL ≥ 0`` wait in two heaps, each ordered by ``|ΔL|``. While the running sum ``s = Σ ΔL`` of what was
dropped is positive the negative candidate nearest zero is dropped, otherwise the smallest non-negative one, so
``s`` stays near zero and every drop is the least harmful of its sign; the loop ends once the parameters saved
reach the budget. (Taking the most negative candidate instead lets first-order gains of large components,
which the second order wipes out, pay for many drops: SmolLM2 at R = 0.2 went to perplexity 19,042.) No group
goes below ``max(1, ⌈keep_rank_ratio · r*⌉)``, ``r*`` its break-even rank (the published one-shot recipe:
0 below R = 0.6, 0.3 at 0.6 and above: :func:`keep_rank_ratio`). A group saves ``max(0, dense − k·(Σm + n))``
at rank k: above its break-even rank it saves nothing and stays dense. Groups that can only stay dense together
(parts of one fused module, such as GPT-2's ``c_attn``) form a unit, which saves
``max(0, Σ_g (dense_g − k_g·cost_g))``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ngc.errors import UsageError
from ngc.fit.closed_form import stack
from ngc.fit.whiten import Transform


@dataclass(frozen=True)
class Candidates:
    """One group's components in the order they would be dropped (ascending σ) and what each costs."""

    scores: tuple[float, ...]  # ΔL of the component dropped j-th (the (r−j)-th largest σ)
    cost: int  # parameters per rank unit: Σ_s m_s + n
    dense: int  # parameters of the dense members: Σ_s m_s · n

    @classmethod
    def of_matrix(cls, m: int, n: int, scores_by_sigma: torch.Tensor | None = None) -> Candidates:
        """One ``m x n`` matrix's candidates from its ΔL in descending-σ order (dropped from the last).

        Without scores every ΔL is 0: the shape alone, enough for :func:`check_reachable`.
        """
        scores = (0.0,) * min(m, n) if scores_by_sigma is None else tuple(float(x) for x in scores_by_sigma.flip(0))
        return cls(scores, m + n, m * n)

    @property
    def full_rank(self) -> int:
        return len(self.scores)

    @property
    def break_even(self) -> int:
        """``r*``: the largest rank that still stores fewer parameters than the dense members."""
        return max(1, (self.dense - 1) // self.cost)

    def min_rank(self, keep_rank_ratio: float) -> int:
        return min(self.full_rank, max(1, math.ceil(keep_rank_ratio * self.break_even)))

    def saved(self, rank: int) -> int:
        """Parameters saved at ``rank`` (0 at or above the break-even rank: the group stays dense)."""
        return max(0, self.dense - rank * self.cost)


@dataclass(frozen=True)
class Selection:
    ranks: dict[str, int]  # kept rank of every group (dense groups: their selected rank, not used)
    dense: tuple[str, ...]  # groups past break-even: left dense
    predicted: float  # Σ ΔL of the components dropped from the groups that are factorised
    saved: int  # parameters saved


def component_scores(
    weights: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor], transform: Transform
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(σ, ΔL)`` of every component of the stacked ``W S``, both ordered by descending σ (float64)."""
    W = stack(weights, transform.device)  # (M, n)
    G = stack(gradients, W.device)  # (M, n)
    U, sigma, Vh = torch.linalg.svd(transform.apply(W), full_matrices=False)  # (M, r), (r,), (r, n)
    H = transform.gradient(G)  # (M, n): the gradient w.r.t. W S
    projected = (U * (H @ Vh.T)).sum(dim=0)  # (r,): u_iᵀ H v_i
    return sigma, -sigma * projected


def keep_rank_ratio(ratio: float) -> float:
    """ZS-SVD's floor on each group's rank, as a fraction of its break-even rank, at removed fraction ``ratio``."""
    return 0.3 if ratio >= 0.6 else 0.0


def _units(groups: Mapping[str, Candidates], units: Mapping[str, str] | None) -> dict[str, list[str]]:
    """Each unit's member groups (a group is its own unit unless ``units`` names another)."""
    members: dict[str, list[str]] = {}
    for gid in groups:
        members.setdefault((units or {}).get(gid, gid), []).append(gid)
    return members


def floor_ranks(
    groups: Mapping[str, Candidates], keep_rank_ratio: float = 0.0, floors: Mapping[str, int] | None = None
) -> dict[str, int]:
    """The lowest rank the selection may leave each group at (capped at its full rank)."""
    return {
        gid: min(c.full_rank, max(c.min_rank(keep_rank_ratio), (floors or {}).get(gid, 0))) for gid, c in groups.items()
    }


def check_reachable(
    groups: Mapping[str, Candidates],
    target_saved: int,
    units: Mapping[str, str] | None = None,
    keep_rank_ratio: float = 0.0,
    floors: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Raise :class:`UsageError` when every group at its floor rank still saves less than ``target_saved``; else
    return those floor ranks (:func:`floor_ranks`).

    Needs only the groups' shapes (their scores are not read), so callers can check a budget before any
    statistics or gradients are collected.
    """
    lowest = floor_ranks(groups, keep_rank_ratio, floors)
    most = sum(
        max(0, sum(groups[g].dense - lowest[g] * groups[g].cost for g in unit))
        for unit in _units(groups, units).values()
    )
    if most < target_saved:
        floor = (
            f" with every matrix kept at {keep_rank_ratio:g} x its break-even rank or more (ZS-SVD's floor)"
            if keep_rank_ratio > 0
            else ""
        )
        raise UsageError(
            f"the zero-sum selection cannot save {target_saved} parameters: dropping every component{floor} "
            f"saves {most}",
            hint="use a lower --ratio (the groups' break-even ranks leave too little to remove)",
        )
    return lowest


def zero_sum_select(
    groups: Mapping[str, Candidates],
    target_saved: int,
    units: Mapping[str, str] | None = None,
    keep_rank_ratio: float = 0.0,
    per_parameter: bool = False,
    floors: Mapping[str, int] | None = None,
) -> Selection:
    """Drop components by the zero-sum rule until ``target_saved`` parameters are saved (module docstring).

    ``units`` maps a group to the unit it stays dense with (default: itself). Every group keeps at least
    ``Candidates.min_rank(keep_rank_ratio)`` (never below 1). ``per_parameter`` ranks candidates by
    ``|ΔL| / cost`` (loss change per parameter a drop saves) instead of ``|ΔL|``. ``floors`` raises a group's
    minimum rank further (capped at its full rank). Raises :class:`UsageError`
    when dropping every droppable component still saves too little.
    """
    floors = check_reachable(groups, target_saved, units, keep_rank_ratio, floors)
    members = _units(groups, units)
    unit_of = {gid: unit for unit, gids in members.items() for gid in gids}
    ranks = {gid: c.full_rank for gid, c in groups.items()}

    def unit_saved(unit: str) -> int:
        return max(0, sum(groups[g].dense - ranks[g] * groups[g].cost for g in members[unit]))

    dropped = dict.fromkeys(groups, 0)
    negative: list[tuple[float, float, str]] = []  # (|ΔL| [/ cost], ΔL, group): the one nearest zero pops first
    positive: list[tuple[float, float, str]] = []

    def offer(gid: str) -> None:
        if ranks[gid] > floors[gid]:
            score = groups[gid].scores[dropped[gid]]
            key = abs(score) / groups[gid].cost if per_parameter else abs(score)
            heapq.heappush(negative if score < 0 else positive, (key, score, gid))

    for gid in groups:
        offer(gid)
    saved = sum(unit_saved(unit) for unit in members)
    running = 0.0
    while saved < target_saved:  # reachable (checked above): a candidate is left until the budget is met
        heap = negative if (running > 0 and negative) or not positive else positive
        _, score, gid = heapq.heappop(heap)
        before = unit_saved(unit_of[gid])
        ranks[gid] -= 1
        dropped[gid] += 1
        running += score
        saved += unit_saved(unit_of[gid]) - before
        offer(gid)
    dense = tuple(gid for gid in groups if unit_saved(unit_of[gid]) == 0)
    predicted = sum(sum(groups[gid].scores[: dropped[gid]]) for gid in groups if gid not in dense)
    return Selection(ranks, dense, predicted, saved)
