"""Non-uniform rank allocations that need the whole model's statistics before any fit (SPEC §4, §6).

- ``v2`` (SVD-LLM V2): within each role, removed fractions from ``1/log`` of each group's raw output error at
  the uniform ratio (:func:`ngc.fit.allocate.v2_ranks`).
- ``zero-sum`` (ZS-SVD): every whitened component of every matrix scored by its first-order loss change from the
  mean calibration gradient, chosen globally by the zero-sum rule (:mod:`ngc.fit.zero_sum`); a matrix past its
  break-even rank is left dense. The members of a group that survive then share one basis again, at the rank
  that stores what their selected per-matrix ranks would (:func:`regroup`). Scoring a whole group as one stack
  instead makes it one dense-or-not unit: on SmolLM2 at R = 0.2, 21 of 30 ``q+k+v`` groups stayed dense and the
  budget came out of the MLPs (perplexity 47.54, against 44.20 for uniform ranks).
- ``loss`` (NGC's): the same selection with candidates ranked by loss change per parameter a drop saves, so a
  component of a wide MLP matrix and one of a narrow k projection compete on equal terms.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import nn

from ngc.calib.fisher import mean_gradients
from ngc.calib.moments import InputMoments
from ngc.config import CompressionConfig
from ngc.fit.allocate import uniform_rank, v2_ranks
from ngc.fit.closed_form import spectrum
from ngc.fit.methods import Method, group_transform
from ngc.fit.whiten import Transform
from ngc.fit.zero_sum import (
    Candidates,
    Selection,
    check_reachable,
    component_scores,
    keep_rank_ratio,
    zero_sum_select,
)
from ngc.pipeline.fitting import member_weight
from ngc.progress import progress
from ngc.topology.blocks import Member
from ngc.topology.groups import Group


@dataclass
class Allocation:
    """The groups that will be fitted, their ranks, and what the allocation reports."""

    groups: tuple[Group, ...]
    ranks: dict[str, int]
    report: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    gradient_seconds: float = 0.0


def _transform(
    method: Method, group: Group, moments: Mapping[str, InputMoments], config: CompressionConfig
) -> Transform:
    return group_transform(method, group, moments, None, config.asvd_alpha, config.whitening)


def allocate_v2(
    model: nn.Module,
    method: Method,
    groups: Sequence[Group],
    moments: Mapping[str, InputMoments],
    config: CompressionConfig,
) -> Allocation:
    """SVD-LLM V2's ranks; the report holds each group's output error ``L_i`` and removed fraction ``R_i``."""
    losses: dict[str, float] = {}
    for group in progress(groups, desc="allocation (spectra)", unit="group"):
        sigma = spectrum([member_weight(model, m) for m in group.members], _transform(method, group, moments, config))
        losses[group.id] = float(sigma[uniform_rank(group, config.ratio) :].pow(2).sum().sqrt())
    ranks, uniform = v2_ranks(groups, losses, config.ratio)
    removed = {g.id: 1.0 - g.params_at_rank(ranks[g.id]) / g.dense_params for g in groups}
    report = {"rule": "v2", "output_error": losses, "ratio_removed": removed, "uniform_roles": uniform}
    warnings = (
        [
            f"v2 allocation: role(s) {', '.join(uniform)} keep the uniform ratio (an output error at or below 1, where "
            "1/log L is undefined; use more calibration tokens)"
        ]
        if uniform
        else []
    )
    return Allocation(tuple(groups), ranks, report, warnings)


def shared_units(groups: Sequence[Group]) -> dict[str, str]:
    """Group id -> the first group id of its unit: groups linked by a shared module (union-find)."""
    parent = {g.id: g.id for g in groups}

    def root(gid: str) -> str:
        while parent[gid] != gid:
            parent[gid] = parent[parent[gid]]
            gid = parent[gid]
        return gid

    owner: dict[str, str] = {}
    for group in groups:
        for member in group.members:
            other = owner.setdefault(member.module, group.id)
            parent[root(group.id)] = root(other)
    return {g.id: root(g.id) for g in groups}


def regroup(group: Group, ranks: Mapping[str, int], dense: AbstractSet[str]) -> tuple[Group, int] | None:
    """The members of ``group`` not left ``dense``, as one group, and the rank that stores what theirs did.

    ``ranks`` and ``dense`` are keyed by the members' per-matrix group ids. The shared rank
    ``⌊Σ_s k_s (m_s + n) / (Σ_s m_s + n)⌋`` (at least 1) never stores more than the per-matrix ranks ``k_s``, so
    the group stays within the selection's budget and below its own break-even rank. ``None``: every member
    stays dense.
    """
    alone = {m: Group((m,)).id for m in group.members}
    survivors = tuple(m for m in group.members if alone[m] not in dense)
    if not survivors:
        return None
    kept = Group(survivors)
    stored = sum(ranks[alone[m]] * (m.m + m.n) for m in survivors)
    return kept, max(1, stored // (kept.m_total + kept.n))


@dataclass(frozen=True)
class MatrixSelection:
    """The zero-sum / loss selection over single matrices, before any group shares a basis again."""

    selection: Selection
    rule: str  # "zero-sum" or "loss"
    target_saved: int  # parameters the ratio asks to remove
    gradient_seconds: float

    @cached_property
    def dense(self) -> frozenset[str]:
        """The matrices past break-even, left dense."""
        return frozenset(self.selection.dense)

    def place(self, group: Group) -> tuple[Group, int] | None:
        """``group``'s members that stay factorised, as one group, and its rank (:func:`regroup`)."""
        return regroup(group, self.selection.ranks, self.dense)


def select_matrices(
    model: nn.Module,
    method: Method,
    members: Sequence[Member],
    moments: Mapping[str, InputMoments],
    windows: torch.Tensor,
    config: CompressionConfig,
) -> MatrixSelection:
    """ZS-SVD's global selection over every matrix in ``members`` (module docstring); matrices that share a
    module (the parts of a fused module, e.g. GPT-2's ``c_attn``) stay dense together or not at all."""
    matrices = [Group((m,)) for m in members]
    start = time.perf_counter()
    gradients = mean_gradients(model, windows, members)
    seconds = time.perf_counter() - start
    offered = {}
    for matrix in progress(matrices, desc="allocation (component scores)", unit="matrix"):
        member = matrix.members[0]
        _sigma, scores = component_scores(
            [member_weight(model, member)], [gradients[member.id]], _transform(method, matrix, moments, config)
        )
        offered[matrix.id] = Candidates.of_matrix(member.m, member.n, scores)
    budget = _SelectionBudget.of(matrices, config)
    selection = zero_sum_select(
        offered, budget.target, budget.units, budget.keep_rank_ratio, config.alloc == "loss", budget.floors
    )
    return MatrixSelection(selection, config.alloc, budget.target, seconds)


@dataclass(frozen=True)
class _SelectionBudget:
    """What the zero-sum / loss selection over ``matrices`` must save, and the ranks it may not go below."""

    target: int  # parameters the ratio asks to remove
    units: dict[str, str]  # matrices that stay dense together
    keep_rank_ratio: float  # ZS-SVD's floor (a fraction of the break-even rank); the loss rule has ``alloc_floor``
    floors: dict[str, int]  # ``alloc_floor`` x each matrix's uniform rank

    @classmethod
    def of(cls, matrices: Sequence[Group], config: CompressionConfig) -> _SelectionBudget:
        return cls(
            target=round(config.ratio * sum(g.members[0].m * g.members[0].n for g in matrices)),
            units=shared_units(matrices),
            keep_rank_ratio=keep_rank_ratio(config.ratio) if config.alloc == "zero-sum" else 0.0,
            floors={g.id: math.ceil(config.alloc_floor * uniform_rank(g, config.ratio)) for g in matrices},
        )


def check_selection_budget(members: Sequence[Member], config: CompressionConfig) -> None:
    """Refuse, from the shapes alone (before statistics or gradients), a ratio the selection cannot reach."""
    matrices = [Group((m,)) for m in members]
    budget = _SelectionBudget.of(matrices, config)
    shapes = {g.id: Candidates.of_matrix(m.m, m.n) for g, m in zip(matrices, members, strict=True)}
    check_reachable(shapes, budget.target, budget.units, budget.keep_rank_ratio, budget.floors)


def regroup_selection(groups: Sequence[Group], selected: MatrixSelection) -> Allocation:
    """Each group's surviving members share one basis again; matrices past break-even leave the topology."""
    selection = selected.selection
    dense = selected.dense
    kept: list[Group] = []
    ranks: dict[str, int] = {}
    shared: dict[str, int] = {}
    for group in groups:
        placed = selected.place(group)
        if placed is not None:
            kept.append(placed[0])
            ranks[placed[0].id] = placed[1]
            if len(placed[0].members) > 1:
                shared[placed[0].id] = placed[1]
    report = {
        "rule": selected.rule,
        "dense": sorted(dense),
        "matrix_ranks": {gid: rank for gid, rank in selection.ranks.items() if gid not in dense},
        "shared_ranks": shared,
        "predicted_loss_change": selection.predicted,
        "target_saved": selected.target_saved,
        "selected_saved": selection.saved,
    }
    warnings = []
    if dense:
        warnings.append(
            f"{selected.rule} allocation: {len(dense)} matri(ces) past their break-even rank stay dense: "
            f"{', '.join(sorted(dense)[:6])}{' ...' if len(dense) > 6 else ''}"
        )
    return Allocation(tuple(kept), ranks, report, warnings, selected.gradient_seconds)


def allocate_zero_sum(
    model: nn.Module,
    method: Method,
    groups: Sequence[Group],
    moments: Mapping[str, InputMoments],
    windows: torch.Tensor,
    config: CompressionConfig,
) -> Allocation:
    """ZS-SVD's global selection over every matrix, then each group's survivors share a basis (module docstring)."""
    members = [m for g in groups for m in g.members]
    return regroup_selection(groups, select_matrices(model, method, members, moments, windows, config))
