"""``compress(model, config, calibration)``: the one verb. Compresses ``model`` in place and reports how."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ngc.accounting import Accounting, account
from ngc.allocation import (
    Allocation,
    allocate_v2,
    allocate_zero_sum,
    check_selection_budget,
    regroup_selection,
    select_matrices,
)
from ngc.calib.collect import CalibrationStats
from ngc.calib.fisher import fisher_information
from ngc.calib.moments import InputMoments
from ngc.config import GRADIENT_ALLOCATIONS, CompressionConfig
from ngc.data.windows import CalibrationWindows
from ngc.errors import UsageError
from ngc.fit.allocate import greedy_ranks, round_ranks, uniform_rank
from ngc.fit.alternating import exact_loss
from ngc.fit.closed_form import fit_group, spectrum
from ngc.fit.methods import METHODS, Method, get_method, group_transform
from ngc.fit.whiten import NumericalError
from ngc.pipeline.distributed import World
from ngc.pipeline.fitting import GroupFitter, member_weight
from ngc.pipeline.run import PipelineOptions, collect_moments, run_pipeline
from ngc.pipeline.source import FolderSource, ModelSource, Sink
from ngc.progress import progress
from ngc.refine.data import RefinementData
from ngc.refine.stage import ClosedFormCallback, plan_distillation, run_distillation_
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
    factorisation: str | None = None  # whitening: "cholesky" or "eigh" (asked for, or the Cholesky fallback)
    # cholesky: min(min L_ii², λ̂_min) / max C_ii; eigh: λ_min / λ_max (or the rejected factor's)
    condition: float | None = None
    floored: int = 0  # eigenvalues raised to the floor


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
    block: dict[str, dict[str, Any]] = field(default_factory=dict)  # layer -> block-wise refinement (SPEC §5)
    allocation: dict[str, Any] = field(default_factory=dict)  # v2 / zero-sum: ratios, dense groups, predicted ΔL
    base_model: dict[str, Any] | None = None  # what the dense model was: name, weights_sha256, config signature
    pipeline: dict[str, Any] = field(default_factory=dict)  # where it ran: source kind, device, batch, precision

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
            "block": self.block,
            "allocation": self.allocation,
            "decisions": self.decisions,
            "base_model": self.base_model,
            "pipeline": self.pipeline,
        }


def plan(model: nn.Module, config: CompressionConfig) -> tuple[Method, list[Member], tuple[Group, ...], dict[str, int]]:
    """Members, groups and ranks of ``config`` on ``model``, checked before any heavy work (``--dry-run``)."""
    method = get_method(config.method)
    if config.topology is not None and method.fixed_topology and config.topology != method.topology:
        raise UsageError(
            f"method {method.name} has a fixed structure ({method.topology}); --topology applies to ngc",
            hint=f"drop --topology, or use --method ngc --topology {config.topology}",
        )
    whitening_methods = ", ".join(m.name for m in METHODS.values() if m.weighting == "whiten")
    for flag, wanted in (
        ("--sequential", config.sequential),
        ("--exact", config.exact),
        ("--refine block", config.refines("block")),
        (f"--alloc {config.alloc}", config.alloc in GRADIENT_ALLOCATIONS),
    ):
        if wanted and method.weighting != "whiten":
            raise UsageError(
                f"{flag} needs a whitening method (factors fitted on calibration statistics); {method.name} "
                "weights the SVD otherwise",
                hint=f"use {flag} with one of {whitening_methods}",
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
    if config.alloc in GRADIENT_ALLOCATIONS:  # refused now rather than after calibration and the gradient pass
        check_selection_budget(members, config)
    return method, members, groups, ranks


def _check_weights(model: nn.Module, members: Sequence[Member]) -> None:
    for name in dict.fromkeys(m.module for m in members):
        weight = model.get_submodule(name).weight
        if weight.device.type != "meta" and not torch.isfinite(weight).all():
            raise NumericalError(f"the weight of {name} contains NaN or Inf", hint="check the model checkpoint")


def _windows(calibration: Calibration) -> torch.Tensor | None:
    if isinstance(calibration, (CalibrationWindows, CalibrationStats)):
        return calibration.tokens
    return calibration if isinstance(calibration, torch.Tensor) else None


def calibration_info(calibration: Calibration, world: World | None = None) -> dict[str, Any]:
    """Provenance of the calibration (SPEC §7: N and L in every result; the number of processes)."""
    size = {"world_size": world.size} if world is not None else {}
    if isinstance(calibration, (CalibrationWindows, CalibrationStats)):
        return {
            "source": calibration.source,
            "split": calibration.split,
            "n_windows": calibration.n_windows,
            "window_len": calibration.window_len,
            "seed": calibration.seed,
        } | size
    if isinstance(calibration, torch.Tensor):
        return {
            "source": "tokens",
            "n_windows": int(calibration.shape[0]),
            "window_len": int(calibration.shape[1]),
        } | size
    return {"source": None} | size


def collect_statistics(
    model: nn.Module,
    calibration: CalibrationWindows | torch.Tensor,
    roles: Sequence[str] | None = None,
    fisher: bool = False,
    options: PipelineOptions | None = None,
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
    options = options or PipelineOptions(device=str(_model_device(model)))
    stats.moments = collect_moments(ModelSource(model, options.device), members, tokens, options, World())
    if fisher:
        stats.fisher = fisher_information(model, tokens, members)
    return stats


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def compress(
    model: nn.Module,
    config: CompressionConfig,
    calibration: Calibration = None,
    options: PipelineOptions | None = None,
    refinement: RefinementData | None = None,
    on_closed_form: ClosedFormCallback | None = None,
) -> CompressionResult:
    """Compress ``model`` in place per ``config``; returns accounting, per-group ranks and losses, timings.

    ``calibration`` is token windows (run through the layer-sequential pipeline: memory stays at one layer's
    statistics), or :class:`CalibrationStats` collected earlier, or ``None`` for plain ``svd``. ``options``
    choose the compute device (default: the model's), the calibration batch and the statistics' precision.
    The result is also attached to the model as ``model.ngc_compression`` (what ``ngc.save`` writes).
    Distillation (``refine="distill"``) reads ``refinement`` (a token stream: ``ngc.refine.data.refinement_data``;
    without it, the calibration windows) and first hands the closed-form model to ``on_closed_form``.
    """
    options = options or PipelineOptions(device=str(_model_device(model)))
    return compress_source(
        ModelSource(model, options.device),
        config,
        calibration,
        options,
        refinement=refinement,
        on_closed_form=on_closed_form,
    )


def compress_source(
    source: ModelSource | FolderSource,
    config: CompressionConfig,
    calibration: Calibration,
    options: PipelineOptions,
    world: World | None = None,
    sink: Sink | None = None,
    refinement: RefinementData | None = None,
    on_closed_form: ClosedFormCallback | None = None,
) -> CompressionResult:
    """:func:`compress` on any layer source (a model in memory, or a folder streamed layer by layer)."""
    world = world or World()
    model = source.model
    method, members, groups, ranks = plan(model, config)
    _check_weights(model, members)
    windows, stats = _check_calibration(method, config, calibration)
    seed = calibration.seed if isinstance(calibration, (CalibrationWindows, CalibrationStats)) else 0
    distillation = plan_distillation(config, windows, refinement, seed)  # checked before any heavy work
    _check_where_it_runs(source, method, config, stats, world)
    whole = isinstance(source, ModelSource)
    result = CompressionResult(config, account(model), [], calibration_info(calibration, world), groups, ranks)
    result.pipeline = {
        "source": "memory" if whole else "folder",
        "device": str(options.device),
        "batch_size": options.batch_size,
        "precision": options.stats().precision,
    }
    fisher = _fisher(model, method, windows, stats, members, result)
    teacher = copy.deepcopy(model) if distillation is not None else None
    groups, ranks, stats = _auto_structure(
        model, method, members, groups, ranks, stats, fisher, config, result, calibration
    )
    kept = {m for g in groups for m in g.members}  # zero-sum allocation leaves groups past break-even dense
    members = [m for m in members if m in kept]
    fitter = GroupFitter(model, method, groups, ranks, config, fisher, world)
    dense_sha256 = source.base_sha256() if whole and world.is_main else None
    uses_data = method.needs_moments or (config.refines("local") or config.refines("block"))
    two_streams = (config.sequential or config.refines("block")) and windows is not None
    start = time.perf_counter()
    run_pipeline(
        source,
        members,
        fitter,
        windows if uses_data else None,
        stats.moments if stats is not None and uses_data and not two_streams else None,
        options,
        world,
        sink,
    )
    # the dense weights' hash: of the model before it changes; of a folder once every layer was read
    result.base_model = {"weights_sha256": dense_sha256 or source.base_sha256()}
    _record_fits(model, result, groups, ranks, fitter, time.perf_counter() - start)
    if teacher is not None and distillation is not None:
        run_distillation_(model, teacher, result, distillation, on_closed_form)
        del teacher
    return result


def _check_where_it_runs(
    source: ModelSource | FolderSource,
    method: Method,
    config: CompressionConfig,
    stats: CalibrationStats | None,
    world: World,
) -> None:
    """Refuse what cannot run on this source and this many processes."""
    if config.refines("block") and world.size > 1:
        raise UsageError(
            "block refinement runs in one process (its steps would need gradients summed across ranks)",
            hint="run without torchrun / accelerate launch, or use --refine none",
        )
    if not isinstance(source, ModelSource) and (
        method.needs_fisher
        or config.refines("distill")
        or config.alloc != "uniform"
        or config.topology == AUTO
        or stats is not None
    ):
        raise UsageError(
            "this configuration needs the whole model in memory (Fisher, distillation, auto allocation or "
            "topology, or precollected statistics)",
            hint="load the model with ngc.load_model and call ngc.compress, or drop those options (ngc's streamed "
            "defaults: alloc='uniform')",
        )


def _record_fits(
    model: nn.Module,
    result: CompressionResult,
    groups: Sequence[Group],
    ranks: dict[str, int],
    fitter: GroupFitter,
    seconds: float,
) -> None:
    """Every group's fit in ``result`` (the pipeline's ``seconds`` split into fitting and calibration), which the
    model then carries as ``model.ngc_compression``."""
    if fitter.pending:
        raise RuntimeError(f"groups left unfitted: {[g.id for g in fitter.pending]}")
    result.fit_seconds += fitter.seconds
    result.calibration_seconds += seconds - fitter.seconds
    result.exact, result.local = fitter.exact, fitter.local
    result.block = {layer: refinement.to_dict() for layer, refinement in fitter.block.items()}
    _report(model, result, groups, ranks, fitter)
    model.ngc_compression = result


def _check_calibration(
    method: Method, config: CompressionConfig, calibration: Calibration
) -> tuple[torch.Tensor | None, CalibrationStats | None]:
    """The windows and precollected statistics, after checking that what the configuration needs is there."""
    windows = _windows(calibration)
    stats = calibration if isinstance(calibration, CalibrationStats) else None
    if (method.needs_moments or method.needs_fisher) and windows is None and stats is None:
        raise UsageError(f"method {method.name} needs calibration data", hint="pass calibration windows")
    needs_windows = (
        (config.sequential, "the sequential update"),
        (config.refines("distill"), "distillation"),
        (config.refines("local") and stats is None, "local refinement"),
        (config.refines("block"), "block refinement"),
        (config.alloc in GRADIENT_ALLOCATIONS, f"the {config.alloc} allocation's gradients"),
    )
    for needed, what in needs_windows:
        if needed and windows is None:
            raise UsageError(
                f"{what} needs calibration windows",
                hint="pass CalibrationWindows or statistics collected by collect_statistics (they keep the windows); "
                "on the command line, the calibration options (--calib, --calib-samples) apply",
            )
    return windows, stats


def _fisher(model, method, windows, stats, members, result) -> dict[str, torch.Tensor] | None:
    fisher = stats.fisher if stats is not None else None
    if method.needs_fisher and fisher is None:
        if windows is None:
            raise UsageError("these statistics hold no Fisher information", hint="collect them with fisher=True")
        start = time.perf_counter()
        fisher = fisher_information(model, windows, members)
        result.calibration_seconds += time.perf_counter() - start
    return fisher


def _auto_structure(model, method, members, groups, ranks, stats, fisher, config, result, calibration):
    """``auto`` topology and non-uniform ranks: both need every group's statistics before any fit."""
    if (config.alloc != "uniform" or config.topology == AUTO) and stats is None and method.needs_moments:
        start = time.perf_counter()
        stats = collect_statistics(model, calibration, config.roles)
        result.calibration_seconds += time.perf_counter() - start
    tokens = _windows(calibration)
    if config.topology == AUTO:
        groups, ranks = _choose_structure(model, method, members, stats, tokens, config, result)
        if config.alloc in GRADIENT_ALLOCATIONS:
            return groups, ranks, stats  # the structure was chosen at the ranks the selection gave
    groups, ranks = _allocate(model, method, groups, ranks, stats, fisher, tokens, config, result)
    return groups, ranks, stats


def _choose_structure(
    model, method, members, stats, tokens, config, result
) -> tuple[tuple[Group, ...], dict[str, int]]:
    """``auto`` topology: every unit takes the structure whose shared fits lose least at the ranks it will get.

    Under a gradient allocation the selection over single matrices does not depend on the groups: it runs first and
    the candidate structures are scored at the ranks it selected; otherwise they are scored at uniform ranks.
    """
    assert stats is not None
    start = time.perf_counter()
    if config.alloc in GRADIENT_ALLOCATIONS:
        assert tokens is not None
        selected = select_matrices(model, method, members, stats.moments, tokens, config)
        chosen, result.decisions = choose_topology(model, method, members, stats.moments, config, selected.place)
        return _take_allocation(result, regroup_selection(chosen, selected), config, start)
    groups, result.decisions = choose_topology(model, method, members, stats.moments, config)
    ranks = round_ranks({group.id: uniform_rank(group, config.ratio) for group in groups}, config.rank_multiple)
    result.topology, result.ranks = groups, ranks
    result.fit_seconds += time.perf_counter() - start
    return groups, ranks


def _allocate(
    model, method, groups, ranks, stats, fisher, tokens, config, result
) -> tuple[tuple[Group, ...], dict[str, int]]:
    """The groups' ranks by ``config.alloc``; ``uniform`` keeps the ranks given."""
    if config.alloc == "uniform":
        return groups, ranks
    start = time.perf_counter()
    if config.alloc == "v2":
        assert stats is not None
        return _take_allocation(result, allocate_v2(model, method, groups, stats.moments, config), config, start)
    if config.alloc in GRADIENT_ALLOCATIONS:
        assert stats is not None and tokens is not None
        allocation = allocate_zero_sum(model, method, groups, stats.moments, tokens, config)
        return _take_allocation(result, allocation, config, start)
    ranks = round_ranks(
        allocate_auto(model, method, groups, stats.moments if stats else {}, fisher, config), config.rank_multiple
    )
    result.ranks = ranks
    result.fit_seconds += time.perf_counter() - start
    return groups, ranks


def _take_allocation(
    result: CompressionResult, allocation: Allocation, config: CompressionConfig, start: float
) -> tuple[tuple[Group, ...], dict[str, int]]:
    """The allocation's groups and (rounded) ranks, recorded in ``result`` with its report and timings."""
    groups, ranks = allocation.groups, round_ranks(allocation.ranks, config.rank_multiple)
    result.topology, result.ranks, result.allocation = groups, ranks, allocation.report
    result.warnings += allocation.warnings
    result.calibration_seconds += allocation.gradient_seconds
    result.fit_seconds += time.perf_counter() - start - allocation.gradient_seconds
    return groups, ranks


def _report(model, result, groups, ranks, fitter) -> None:
    result.accounting = account(model)
    result.groups = [
        GroupReport(
            g.id,
            ranks[g.id],
            tuple(m.id for m in g.members),
            fitter.fitted[g.id].loss,
            fitter.fitted[g.id].relative_loss,
            fitter.fitted[g.id].ridge,
            fitter.fitted[g.id].factorisation,
            fitter.fitted[g.id].condition,
            fitter.fitted[g.id].floored,
        )
        for g in groups
    ]
    fallback = [g for g in result.groups if g.factorisation == "eigh" and result.config.whitening == "cholesky"]
    if fallback:
        result.warnings.append(
            f"{len(fallback)} group(s) had a Cholesky factor with rounding-level pivots and were whitened by an "
            f"eigendecomposition instead ({sum(g.floored for g in fallback)} eigenvalues floored): "
            f"{', '.join(g.id for g in fallback[:6])}"
        )
    ridged = [g for g in result.groups if g.ridge > 0]
    if ridged:
        result.warnings.append(
            f"{len(ridged)} group(s) needed a ridge to be positive definite (largest {max(g.ridge for g in ridged):g}"
            f" x mean diagonal): {', '.join(g.id for g in ridged[:6])}"
        )
    if result.config.sequential and any(len(g.layers) > 1 for g in groups):
        result.warnings.append(
            "the sequential update with cross-layer groups: a group is fitted after its last layer, so its members in "
            "later layers are fitted on inputs from a prefix whose earlier members were still dense"
        )
    if fitter.short:
        result.warnings.append(_short_warning(fitter.short))
    for warning in result.warnings:
        log.warning(warning)


def choose_topology(
    model: nn.Module,
    method: Method,
    members: Sequence[Member],
    moments: dict[str, InputMoments],
    config: CompressionConfig,
    place: Callable[[Group], tuple[Group, int] | None] | None = None,
) -> tuple[tuple[Group, ...], dict[str, str]]:
    """``auto``: per unit, the candidate structure whose closed-form fit gives the least output error.

    ``place`` gives a candidate group's members that are factorised and their rank (``None``: all stay dense, no
    error); by default all of them, at the uniform rank. Every candidate of a unit stores about the same."""

    def uniform(group: Group) -> tuple[Group, int]:
        return group, max(uniform_rank(group, config.ratio), 1)

    place = place or uniform
    weights = {m: member_weight(model, m).detach().to(dtype=torch.float64) for m in members}

    def score(groups: tuple[Group, ...]) -> float:
        total = 0.0
        for placed in filter(None, map(place, groups)):
            group, rank = placed
            transform = group_transform(method, group, moments, None, config.asvd_alpha, config.whitening)
            targets = [weights[m] for m in group.members]
            fit = fit_group(targets, rank, transform)
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
        transform = group_transform(method, group, moments, fisher, config.asvd_alpha, config.whitening)
        spectra[group.id] = spectrum([member_weight(model, m) for m in group.members], transform)
    return greedy_ranks(groups, spectra, config.ratio, config.alloc == "auto", config.alloc_floor)


def _short_warning(short: list[tuple[str, int, int]]) -> str:
    widest = max(n for _, _, n in short)
    return (
        f"calibration gave {short[0][1]} tokens for {len(short)} input(s) wider than that (e.g. {short[0][0]}, "
        f"width {short[0][2]}): their covariance is singular and a ridge was added; use at least {widest} tokens "
        f"(more or longer windows) for a faithful fit"
    )
