"""Non-uniform rank allocations that need the whole model's statistics before any fit (SPEC §4, §6).

- ``v2`` (SVD-LLM V2): within each role, removed fractions from ``1/log`` of each group's raw output error at
  the uniform ratio (:func:`ngc.fit.allocate.v2_ranks`).
- ``zero-sum`` (ZS-SVD): every whitened component of every group scored by its first-order loss change from the
  mean calibration gradient, chosen globally by the zero-sum rule (:mod:`ngc.fit.zero_sum`); a group past its
  break-even rank is left dense and leaves the topology before fitting.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
from ngc.fit.zero_sum import candidates, component_scores, keep_rank_ratio, zero_sum_select
from ngc.pipeline.fitting import member_weight
from ngc.progress import progress
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


def allocate_zero_sum(
    model: nn.Module,
    method: Method,
    groups: Sequence[Group],
    moments: Mapping[str, InputMoments],
    windows: torch.Tensor,
    config: CompressionConfig,
) -> Allocation:
    """ZS-SVD's global selection; groups past break-even are dropped from the returned topology (left dense).

    Groups that share a module (the parts of a fused module, e.g. GPT-2's ``c_attn``) stay dense together or not
    at all: the break-even rule applies to them as one unit.
    """
    members = [m for g in groups for m in g.members]
    start = time.perf_counter()
    gradients = mean_gradients(model, windows, members)
    seconds = time.perf_counter() - start
    offered = {}
    for group in progress(groups, desc="allocation (component scores)", unit="group"):
        weights = [member_weight(model, m) for m in group.members]
        _sigma, scores = component_scores(
            weights, [gradients[m.id] for m in group.members], _transform(method, group, moments, config)
        )
        offered[group.id] = candidates(scores, group.m_total + group.n, group.dense_params)
    target = round(config.ratio * sum(g.dense_params for g in groups))
    selection = zero_sum_select(offered, target, shared_units(groups), keep_rank_ratio(config.ratio))
    dense = set(selection.dense)
    kept = tuple(g for g in groups if g.id not in dense)
    report = {
        "rule": "zero-sum",
        "dense": sorted(dense),
        "predicted_loss_change": selection.predicted,
        "target_saved": target,
        "selected_saved": selection.saved,
    }
    warnings = []
    if dense:
        warnings.append(
            f"zero-sum allocation: {len(dense)} group(s) past their break-even rank stay dense: "
            f"{', '.join(sorted(dense)[:6])}{' ...' if len(dense) > 6 else ''}"
        )
    ranks = {g.id: selection.ranks[g.id] for g in kept}
    return Allocation(kept, ranks, report, warnings, seconds)
