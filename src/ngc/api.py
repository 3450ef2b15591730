"""``compress(model, config, calibration)``: the one verb. Compresses ``model`` in place and reports how."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ngc.accounting import Accounting, account
from ngc.arch import block_at, role_weights
from ngc.calib.collect import CalibrationStats, stream_layer_moments, stream_sequential_moments
from ngc.calib.fisher import fisher_information
from ngc.calib.moments import InputMoments
from ngc.config import CompressionConfig
from ngc.data.windows import CalibrationWindows
from ngc.errors import UsageError
from ngc.fit.allocate import greedy_ranks, round_ranks, uniform_rank
from ngc.fit.alternating import alternate, exact_loss
from ngc.fit.closed_form import GroupFit, fit_group, spectrum
from ngc.fit.methods import Method, get_method, group_transform
from ngc.fit.sequential import sequential_target
from ngc.fit.whiten import NumericalError
from ngc.modules.swap import factorize
from ngc.progress import progress
from ngc.refine.distill import distill
from ngc.refine.local import refine_local
from ngc.topology.auto import choose
from ngc.topology.blocks import Member, find_members, parse_roles
from ngc.topology.groups import Group, build_topology

log = logging.getLogger(__name__)

AUTO = "auto"
Calibration = CalibrationWindows | CalibrationStats | torch.Tensor | None


@dataclass(frozen=True)
class GroupReport:
    id: str
    rank: int
    members: tuple[str, ...]  # member ids, e.g. "L3.q"
    loss: float  # truncation loss in the method's metric
    relative_loss: float
    ridge: float


@dataclass
class CompressionResult:
    config: CompressionConfig
    accounting: Accounting
    groups: list[GroupReport]
    calibration: dict[str, Any]
    topology: tuple[Group, ...] = ()
    ranks: dict[str, int] = field(default_factory=dict)
    calibration_seconds: float = 0.0
    fit_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    exact: dict[str, tuple[float, float]] = field(default_factory=dict)  # group -> exact loss before, after
    local: dict[str, tuple[float, float]] = field(default_factory=dict)  # group -> normalised MSE before, after
    decisions: dict[str, str] = field(default_factory=dict)  # auto topology: unit -> chosen family
    distill: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "accounting": self.accounting.to_dict(),
            "groups": [vars(g) | {"members": list(g.members)} for g in self.groups],
            "calibration": self.calibration,
            "calibration_seconds": self.calibration_seconds,
            "fit_seconds": self.fit_seconds,
            "warnings": self.warnings,
            "exact": {k: list(v) for k, v in self.exact.items()},
            "local": {k: list(v) for k, v in self.local.items()},
            "distill": self.distill,
            "decisions": self.decisions,
        }


def plan(model: nn.Module, config: CompressionConfig) -> tuple[Method, list[Member], tuple[Group, ...], dict[str, int]]:
    """Members, groups and ranks of ``config`` on ``model``, checked before any heavy work (``--dry-run``)."""
    method = get_method(config.method)
    if config.topology is not None and method.fixed_topology and config.topology != method.topology:
        raise UsageError(
            f"method {method.name} has a fixed structure ({method.topology}); --topology applies to ngc",
            hint=f"drop --topology, or use --method ngc --topology {config.topology}",
        )
    for flag, wanted in (("--sequential", config.sequential), ("--exact", config.exact)):
        if wanted and method.weighting != "whiten":
            raise UsageError(
                f"{flag} needs a whitening method; {method.name} weights the SVD otherwise",
                hint=f"use {flag} with svd-llm, basis-sharing or ngc",
            )
    members = find_members(model, parse_roles(config.roles))
    if not members:
        raise UsageError("no decoder linear block matches the selected roles", hint="check --roles")
    topology = config.topology or method.topology
    # auto is chosen after calibration (compress); until then the plan shows per-matrix groups
    groups = build_topology("per-matrix" if topology == AUTO else topology, members)
    ranks = round_ranks({group.id: uniform_rank(group, config.ratio) for group in groups}, config.rank_multiple)
    empty = [group.id for group in groups if ranks[group.id] < 1]
    if empty:
        raise UsageError(
            f"ratio {config.ratio} leaves no rank for {len(empty)} group(s): {', '.join(empty[:6])}",
            hint="use a lower --ratio (these blocks are too small to keep any rank)",
        )
    return method, members, groups, ranks


def _check_weights(model: nn.Module, members: Sequence[Member]) -> None:
    for name in dict.fromkeys(m.module for m in members):
        weight = model.get_submodule(name).weight
        if not torch.isfinite(weight).all():
            raise NumericalError(f"the weight of {name} contains NaN or Inf", hint="check the model checkpoint")


def _windows(calibration: Calibration) -> torch.Tensor | None:
    if isinstance(calibration, (CalibrationWindows, CalibrationStats)):
        return calibration.tokens
    return calibration if isinstance(calibration, torch.Tensor) else None


def calibration_info(calibration: Calibration) -> dict[str, Any]:
    """Provenance of the calibration (SPEC §7: N and L in every result)."""
    if isinstance(calibration, (CalibrationWindows, CalibrationStats)):
        return {
            "source": calibration.source,
            "split": calibration.split,
            "n_windows": calibration.n_windows,
            "window_len": calibration.window_len,
            "seed": calibration.seed,
        }
    if isinstance(calibration, torch.Tensor):
        return {"source": "tokens", "n_windows": int(calibration.shape[0]), "window_len": int(calibration.shape[1])}
    return {"source": None}


def collect_statistics(
    model: nn.Module,
    calibration: CalibrationWindows | torch.Tensor,
    roles: Sequence[str] | None = None,
    fisher: bool = False,
) -> CalibrationStats:
    """Keep every compressed input's moments (and optionally Fisher), to fit many configurations from one pass."""
    members = find_members(model, parse_roles(roles))
    tokens = _windows(calibration)
    if tokens is None:
        raise UsageError("statistics need calibration windows")
    info = calibration_info(calibration)
    stats = CalibrationStats(
        source=str(info["source"]),
        split=info.get("split"),
        n_windows=int(info["n_windows"]),
        window_len=int(info["window_len"]),
        seed=int(info.get("seed", 0)),
        tokens=tokens,
    )
    for _layer, moments in stream_layer_moments(model, tokens, members):
        stats.moments.update(moments)
    if fisher:
        stats.fisher = fisher_information(model, tokens, members)
    return stats


def compress(model: nn.Module, config: CompressionConfig, calibration: Calibration = None) -> CompressionResult:
    """Compress ``model`` in place per ``config``; returns accounting, per-group ranks and losses, timings.

    ``calibration`` is token windows (streamed layer by layer: memory stays at one layer's statistics), or
    :class:`CalibrationStats` collected earlier, or ``None`` for plain ``svd``.
    """
    method, members, groups, ranks = plan(model, config)
    _check_weights(model, members)
    windows = _windows(calibration)
    stats = calibration if isinstance(calibration, CalibrationStats) else None
    if (method.needs_moments or method.needs_fisher) and windows is None and stats is None:
        raise UsageError(f"method {method.name} needs calibration data", hint="pass calibration windows")
    for needed, what in ((config.sequential, "the sequential update"), (config.refine == "distill", "distillation")):
        if needed and windows is None:
            raise UsageError(
                f"{what} needs calibration windows",
                hint="pass CalibrationWindows or statistics collected by collect_statistics (they keep the windows)",
            )
    result = CompressionResult(config, account(model), [], calibration_info(calibration), groups, ranks)
    fisher = stats.fisher if stats is not None else None
    if method.needs_fisher and fisher is None:
        if windows is None:
            raise UsageError("these statistics hold no Fisher information", hint="collect them with fisher=True")
        start = time.perf_counter()
        fisher = fisher_information(model, windows, members)
        result.calibration_seconds += time.perf_counter() - start

    teacher = copy.deepcopy(model) if config.refine == "distill" else None
    auto_topology = config.topology == AUTO
    if (config.alloc != "uniform" or auto_topology) and stats is None and method.needs_moments:
        start = time.perf_counter()
        stats = collect_statistics(model, calibration, config.roles)  # auto needs every group's loss first
        result.calibration_seconds += time.perf_counter() - start
    if auto_topology:
        assert stats is not None
        start = time.perf_counter()
        groups, result.decisions = choose_topology(model, method, members, stats.moments, config)
        ranks = round_ranks({group.id: uniform_rank(group, config.ratio) for group in groups}, config.rank_multiple)
        result.topology, result.ranks = groups, ranks
        result.fit_seconds += time.perf_counter() - start
    if config.alloc != "uniform":
        start = time.perf_counter()
        ranks = round_ranks(
            allocate_auto(model, method, groups, stats.moments if stats else {}, fisher, config), config.rank_multiple
        )
        result.ranks = ranks
        result.fit_seconds += time.perf_counter() - start

    pending = list(groups)
    fitted: dict[str, GroupFit] = {}
    available: dict[str, InputMoments] = {}
    bases: dict = {}

    def fit_groups(ready: Sequence[Group]) -> None:
        """Fit ``ready`` groups, swap in every module whose groups are all fitted, drop unneeded moments."""
        start = time.perf_counter()
        for group in ready:
            transform = group_transform(method, group, available, fisher, config.asvd_alpha)
            weights = [_member_weight(model, m) for m in group.members]
            if config.sequential:
                weights = [
                    sequential_target(w, available[m.input_key], m.id, config.sequential_shrink)
                    for w, m in zip(weights, group.members, strict=True)
                ]
            fitted[group.id] = fit_group(weights, ranks[group.id], transform)
            if config.exact and len({m.input_key for m in group.members}) > 1:
                fitted[group.id], result.exact[group.id] = refine_exact(fitted[group.id], weights, group, available)
            if config.refine == "local":
                fit = fitted[group.id]
                targets = [w.detach().to(device="cpu", dtype=torch.float64) for w in weights]
                covariances = [available[m.input_key].second for m in group.members]
                A, B, result.local[group.id] = refine_local(
                    targets, fit.A, fit.B, covariances, config.steps, config.refine_lr
                )
                fitted[group.id] = GroupFit(tuple(A), B, fit.sigma, fit.ridge)
            pending.remove(group)
        done = [g for g in groups if g.id in fitted]
        factorize(model, done, ranks, fitted, modules=_modules_done(ready, pending), bases=bases)
        needed = {m.input_key for g in pending for m in g.members}
        for key in [k for k in available if k not in needed]:
            del available[key]
        result.fit_seconds += time.perf_counter() - start

    if method.needs_moments or config.refine == "local":
        start = time.perf_counter()
        short: list[tuple[str, int, int]] = []
        seen_inputs: set[str] = set()
        layer_moments = (
            stream_sequential_moments(model, windows, members)
            if config.sequential and windows is not None
            else _layer_moments(model, windows, stats, members)
        )
        for _layer, moments in layer_moments:
            short += _short_inputs(moments)
            available.update(moments)
            seen_inputs.update(moments)
            result.calibration_seconds += time.perf_counter() - start
            fit_groups([g for g in pending if all(m.input_key in seen_inputs for m in g.members)])
            start = time.perf_counter()
        result.calibration_seconds += time.perf_counter() - start
        if short:
            result.warnings.append(_short_warning(short))
    else:
        for group in progress(groups, desc="fitting (groups)", unit="group"):
            fit_groups([group])
    if pending:
        raise RuntimeError(f"groups left unfitted: {[g.id for g in pending]}")

    if teacher is not None:
        if windows is None:
            raise UsageError("distillation needs calibration windows", hint="pass CalibrationWindows")
        seed = calibration.seed if isinstance(calibration, (CalibrationWindows, CalibrationStats)) else 0
        result.distill = distill(model, teacher, windows, config.steps, config.refine_lr, seed).to_dict()
        del teacher
    result.accounting = account(model)
    result.groups = [
        GroupReport(
            g.id,
            ranks[g.id],
            tuple(m.id for m in g.members),
            fitted[g.id].loss,
            fitted[g.id].relative_loss,
            fitted[g.id].ridge,
        )
        for g in groups
    ]
    ridged = [g for g in result.groups if g.ridge > 0]
    if ridged:
        result.warnings.append(
            f"{len(ridged)} group(s) needed a ridge to be positive definite (largest {max(g.ridge for g in ridged):g}"
            f" x mean diagonal): {', '.join(g.id for g in ridged[:6])}"
        )
    for warning in result.warnings:
        log.warning(warning)
    return result


def refine_exact(
    fit: GroupFit, weights: Sequence[torch.Tensor], group: Group, moments: dict[str, InputMoments]
) -> tuple[GroupFit, tuple[float, float]]:
    """Alternating solves on the exact per-member objective (only groups whose members read different inputs)."""
    targets = [w.detach().to(device="cpu", dtype=torch.float64) for w in weights]
    covariances = [moments[m.input_key].second for m in group.members]
    A, B, losses = alternate(targets, fit.A, fit.B, covariances)
    return GroupFit(tuple(A), B, fit.sigma, fit.ridge), (losses[0], losses[-1])


def choose_topology(
    model: nn.Module,
    method: Method,
    members: Sequence[Member],
    moments: dict[str, InputMoments],
    config: CompressionConfig,
) -> tuple[tuple[Group, ...], dict[str, str]]:
    """``auto``: per unit, the candidate structure whose closed-form fit gives the least output error."""
    weights = {m: _member_weight(model, m).detach().to(dtype=torch.float64) for m in members}

    def score(groups: tuple[Group, ...]) -> float:
        total = 0.0
        for group in groups:
            transform = group_transform(method, group, moments, None, config.asvd_alpha)
            targets = [weights[m] for m in group.members]
            fit = fit_group(targets, max(uniform_rank(group, config.ratio), 1), transform)
            total += exact_loss(targets, fit.A, fit.B, [moments[m.input_key].second for m in group.members])
        return total

    return choose(members, score)


def allocate_auto(
    model: nn.Module,
    method: Method,
    groups: Sequence[Group],
    moments: dict[str, InputMoments],
    fisher: dict[str, torch.Tensor] | None,
    config: CompressionConfig,
) -> dict[str, int]:
    """Greedy ranks from every group's spectrum in the method's metric (SPEC §4 ``auto``)."""
    spectra = {}
    for group in progress(groups, desc="allocation (spectra)", unit="group"):
        transform = group_transform(method, group, moments, fisher, config.asvd_alpha)
        spectra[group.id] = spectrum([_member_weight(model, m) for m in group.members], transform)
    return greedy_ranks(groups, spectra, config.ratio, config.alloc == "auto", config.alloc_floor)


def _member_weight(model: nn.Module, member: Member) -> torch.Tensor:
    return role_weights(model, block_at(model, member.module))[member.role]


def _modules_done(ready: Sequence[Group], pending: Sequence[Group]) -> set[str]:
    """Modules all of whose members are fitted (a fused module waits for all its roles' groups)."""
    waiting = {m.module for g in pending for m in g.members}
    return {m.module for g in ready for m in g.members} - waiting


def _layer_moments(
    model: nn.Module, windows: torch.Tensor | None, stats: CalibrationStats | None, members: Sequence[Member]
) -> Iterator[tuple[int, dict[str, InputMoments]]]:
    if stats is not None:
        wanted = {m.input_key for m in members}
        missing = sorted(wanted - set(stats.moments))
        if missing:
            raise UsageError(
                f"the statistics lack {len(missing)} input(s), e.g. {missing[0]}",
                hint="collect statistics for the same model and roles",
            )
        yield from stats.layers()
        return
    assert windows is not None
    yield from stream_layer_moments(model, windows, members)


def _short_inputs(moments: dict[str, InputMoments]) -> list[tuple[str, int, int]]:
    """Inputs with fewer calibration tokens than their width: their covariance is singular."""
    return [(key, m.tokens, m.n) for key, m in moments.items() if m.tokens < m.n]


def _short_warning(short: list[tuple[str, int, int]]) -> str:
    widest = max(n for _, _, n in short)
    return (
        f"calibration gave {short[0][1]} tokens for {len(short)} input(s) wider than that (e.g. {short[0][0]}, "
        f"width {short[0][2]}): their covariance is singular and a ridge was added; use at least {widest} tokens "
        f"(more or longer windows) for a faithful fit"
    )
