"""Fit the groups whose inputs have all been seen, swap in the modules they complete, forget what is not needed.

A group is fitted as soon as the moments of every input it reads exist (an intra group after its layer, a
cross-layer group after its last member's layer). Moments are dropped once no pending group reads them, so a
cross-layer group holds only its members' statistics until it is fitted.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from ngc.arch import block_at, role_weights
from ngc.calib.moments import InputMoments
from ngc.config import CompressionConfig
from ngc.fit.alternating import alternate
from ngc.fit.closed_form import GroupFit, fit_group
from ngc.fit.methods import Method, group_transform
from ngc.fit.sequential import sequential_target
from ngc.modules.factorized import GroupBasis
from ngc.modules.swap import factorize
from ngc.pipeline.calibrate import Streams
from ngc.pipeline.distributed import World
from ngc.refine.block import BlockRefinement, layer_factors, refine_block
from ngc.refine.local import refine_local
from ngc.topology.groups import Group


def member_weight(model: nn.Module, member) -> torch.Tensor:
    """The dense weight (m, n) of one member, as the model holds it now."""
    return role_weights(model, block_at(model, member.module))[member.role]


@dataclass
class GroupFitter:
    """The fitting stage of the pipeline: pending groups, the moments they wait for, and what was fitted."""

    model: nn.Module
    method: Method
    groups: Sequence[Group]
    ranks: Mapping[str, int]
    config: CompressionConfig
    fisher: Mapping[str, torch.Tensor] | None = None
    world: World = field(default_factory=World)
    pending: list[Group] = field(init=False)
    fitted: dict[str, GroupFit] = field(default_factory=dict)
    available: dict[str, InputMoments] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    bases: dict[str, GroupBasis] = field(default_factory=dict)
    exact: dict[str, tuple[float, float]] = field(default_factory=dict)
    local: dict[str, tuple[float, float]] = field(default_factory=dict)
    block: dict[str, BlockRefinement] = field(default_factory=dict)  # "L3" -> its block-wise refinement
    seconds: float = 0.0
    short: list[tuple[str, int, int]] = field(default_factory=list)  # inputs with fewer tokens than their width

    def __post_init__(self) -> None:
        self.pending = list(self.groups)
        self._index = {group.id: i for i, group in enumerate(self.groups)}
        self._swapped: set[str] = set()

    def add(self, moments: Mapping[str, InputMoments]) -> None:
        """Moments of inputs just calibrated (already summed over ranks)."""
        self.available.update(moments)
        self.seen.update(moments)
        self.short += [(key, m.tokens, m.n) for key, m in moments.items() if m.tokens < m.n]

    def fit_ready(self) -> list[Group]:
        """Fit every pending group whose inputs have all been seen; swap the modules that are now complete."""
        ready = [g for g in self.pending if all(m.input_key in self.seen for m in g.members)]
        if not ready:
            return []
        start = time.perf_counter()
        for group in ready:
            self.fitted[group.id] = self._fit_shared(group)
            self.pending.remove(group)
        modules = self._modules_done(ready)
        swapping = [g for g in self.groups if g.id in self.fitted and any(m.module in modules for m in g.members)]
        factorize(self.model, swapping, self.ranks, self.fitted, modules=modules, bases=self.bases)
        self._swapped |= modules
        self._keep_only_reports()
        needed = {m.input_key for g in self.pending for m in g.members}
        for key in [k for k in self.available if k not in needed]:
            del self.available[key]
        self.seconds += time.perf_counter() - start
        return ready

    def _keep_only_reports(self) -> None:
        """A group whose modules are all swapped keeps its spectrum and report, not its float64 factors (they
        live in the model now; kept, they would grow with depth: 280 MB a layer for 7B's q, k, v)."""
        for group in self.groups:
            fit = self.fitted.get(group.id)
            if fit is None or not fit.A or any(m.module not in self._swapped for m in group.members):
                continue
            empty = torch.empty(0, fit.rank, dtype=torch.float64)  # keeps .rank for the report
            self.fitted[group.id] = replace(fit, A=(), B=empty, sigma=fit.sigma.cpu())

    def refine_block(self, layer: nn.Module, index: int, streams: Streams) -> None:
        """Block-wise refinement of decoder layer ``index`` (SPEC §5) on the two streams, before they advance.

        Trains the factors swapped into the layer so far; bases of cross-layer groups stay fixed.
        """
        assert streams.compressed is not None
        compressed = streams.compressed
        shared = {g.id for g in self.groups if len(g.layers) > 1}
        params = layer_factors(layer, shared)
        if not params:
            return
        start = time.perf_counter()
        self.block[f"L{index}"] = refine_block(
            layer,
            params,
            lambda b: streams.batch(compressed, b),
            lambda b: streams.batch(streams.dense, b),
            streams.kwargs[index],
            self.config.steps_for("block"),
            self.config.refine_lr,
        )
        self.seconds += time.perf_counter() - start

    def layer_complete(self, layer: int) -> bool:
        """No pending group has a member in ``layer``."""
        return all(m.layer != layer for g in self.pending for m in g.members)

    def _fit_shared(self, group: Group) -> GroupFit:
        """Fit on the owning rank, then hand the factors to every rank."""
        owner = self.world.owner(self._index[group.id])
        fit = self._fit(group) if self.world.rank == owner else None
        rows = [m.m for m in group.members]
        count = min(sum(rows), group.n)
        return self.world.broadcast_fit(fit, owner, (rows, group.n, self.ranks[group.id], count))

    def _fit(self, group: Group) -> GroupFit:
        """The closed form of the method, then the optional exact and local refinements (SPEC §4, §5)."""
        config = self.config
        transform = group_transform(
            self.method, group, self.available, self.fisher, config.asvd_alpha, config.whitening
        )
        weights = [member_weight(self.model, m) for m in group.members]
        if config.sequential:
            weights = [
                sequential_target(w, self.available[m.input_key], m.id, config.sequential_shrink)
                for w, m in zip(weights, group.members, strict=True)
            ]
        fit = fit_group(weights, self.ranks[group.id], transform)
        covariances = [self.available[m.input_key].second for m in group.members] if self.available else []
        if config.exact and len({m.input_key for m in group.members}) > 1:
            targets = [w.detach().to(device=fit.B.device, dtype=torch.float64) for w in weights]
            A, B, losses = alternate(targets, fit.A, fit.B, covariances)
            fit, self.exact[group.id] = replace(fit, A=tuple(A), B=B), (losses[0], losses[-1])
        if config.refines("local"):
            targets = [w.detach().to(device=fit.B.device, dtype=torch.float64) for w in weights]
            with torch.enable_grad():  # the pipeline's calibration runs under no_grad
                A, B, self.local[group.id] = refine_local(
                    targets, fit.A, fit.B, covariances, config.steps_for("local"), config.refine_lr
                )
            fit = replace(fit, A=tuple(A), B=B)
        return fit

    def _modules_done(self, ready: Sequence[Group]) -> set[str]:
        """Modules all of whose members are fitted (a fused module waits for all its roles' groups)."""
        waiting = {m.module for g in self.pending for m in g.members}
        return {m.module for g in ready for m in g.members} - waiting
