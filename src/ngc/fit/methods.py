"""The methods: each is a topology and an input weighting of the closed-form fit (SPEC §4, §6).

| method        | structure                                          | transform S of SVD(W S)            |
|---------------|----------------------------------------------------|------------------------------------|
| svd           | per-matrix                                         | I                                  |
| fwsvd         | per-matrix                                         | diag(√F), F = per-input Fisher     |
| asvd          | per-matrix                                         | diag((mean |x|)^α), α = 0.5        |
| svd-llm       | per-matrix                                         | Cholesky factor of C               |
| basis-sharing | q,k,v,gate,up across 2 layers; o, down per-matrix  | Cholesky factor of pooled C        |
| ngc           | any topology (SPEC §2), default intra              | Cholesky factor of pooled C        |
| svd-llm-v2    | per-matrix; per-role ranks from 1/log of each loss | eigendecomposition factor of C     |
| aa-svd        | per-matrix; anchored target, block refinement      | Cholesky factor of C̃ (sequential)  |
| zs-svd        | per-matrix; components kept by the zero-sum rule   | Cholesky factor of C               |

A method's ``defaults`` fill the config fields left unset (``alloc``, ``sequential``, ``sequential_shrink``,
``refine``, ``whitening``); ``streamed`` and ``multi_process`` replace defaults that cannot run when the model is
streamed layer by layer or split over processes (``ngc.cli.compress_source``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ngc.calib.moments import InputMoments
from ngc.errors import UsageError
from ngc.fit.whiten import IDENTITY, Transform, diagonal, whitening
from ngc.topology.groups import Group


@dataclass(frozen=True)
class Method:
    name: str
    topology: str
    weighting: str  # "identity" | "fisher" | "abs-mean" | "whiten"
    fixed_topology: bool
    summary: str
    defaults: Mapping[str, object] = field(default_factory=lambda: {"alloc": "uniform", "sequential": False})
    # (R, fields): from removed fraction R on, these fields replace ``defaults`` (what was measured best there)
    from_ratio: tuple[float, Mapping[str, object]] | None = None
    streamed: Mapping[str, object] = field(default_factory=dict)  # defaults replaced when streamed layer by layer
    multi_process: Mapping[str, object] = field(default_factory=dict)  # defaults replaced under torchrun

    def defaults_at(self, ratio: float) -> Mapping[str, object]:
        """The defaults at removed fraction ``ratio``."""
        if self.from_ratio is not None and ratio >= self.from_ratio[0]:
            return {**self.defaults, **self.from_ratio[1]}
        return self.defaults

    @property
    def needs_moments(self) -> bool:
        return self.weighting in ("abs-mean", "whiten")

    @property
    def needs_fisher(self) -> bool:
        return self.weighting == "fisher"


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("svd", "per-matrix", "identity", True, "plain truncated SVD of each weight"),
        Method("fwsvd", "per-matrix", "fisher", True, "SVD weighted by per-input-channel Fisher information"),
        Method("asvd", "per-matrix", "abs-mean", True, "SVD scaled by activation magnitudes (alpha = 0.5)"),
        Method("svd-llm", "per-matrix", "whiten", True, "truncation-aware whitening, one basis per weight"),
        Method("basis-sharing", "basis-sharing", "whiten", True, "q,k,v,gate,up bases shared by 2 adjacent layers"),
        Method(
            "ngc",
            "intra",
            "whiten",
            False,
            "neuronal groups: shared input states per topology",
            # the best training-free setting measured on SmolLM2 at R = 0.2 to 0.4 (README, docs/defaults.md): intra
            # groups, ranks by loss change per parameter saved, the sequential update with a ridge of 1 (0.1 fits
            # each layer to the calibration text), block-wise refinement; from R = 0.5 the first-order loss scores
            # mislead where they cut a matrix far below its uniform rank: every matrix keeps half its uniform rank
            # at least, and the nearly exact update (ridge 0.1) is better there
            {"alloc": "loss", "sequential": True, "sequential_shrink": 1.0, "refine": "block"},
            from_ratio=(0.5, {"alloc_floor": 0.5, "sequential_shrink": 0.1}),
            # what the defaults become where they cannot run (ngc.cli.compress_source): streamed layer by layer (the
            # loss scores need the whole model: uniform ranks, with the ridge measured with them) and several
            # processes (block steps run in one)
            streamed={"alloc": "uniform", "sequential_shrink": 0.1},
            multi_process={"refine": "none"},
        ),
        Method(
            "svd-llm-v2",
            "per-matrix",
            "whiten",
            True,
            "eigendecomposition whitening, per-role ratios from 1/log of each weight's loss",
            {"alloc": "v2", "sequential": False, "whitening": "eigen"},
        ),
        Method(
            "aa-svd",
            "per-matrix",
            "whiten",
            True,
            "anchored to dense outputs on the compressed prefix's inputs, then block-wise refinement",
            # AA-SVD's recipe: the exact anchored target (shrink 0), uniform ranks, 25 Adam steps per layer
            {"alloc": "uniform", "sequential": True, "sequential_shrink": 0.0, "refine": "block"},
        ),
        Method(
            "zs-svd",
            "per-matrix",
            "whiten",
            True,
            "whitened components kept by their first-order loss change (zero-sum rule), dense past break-even",
            {"alloc": "zero-sum", "sequential": False},
        ),
    )
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise UsageError(f"unknown method {name!r}", hint=f"methods: {', '.join(METHODS)}")
    return METHODS[name]


def distinct_inputs(group: Group, moments: Mapping[str, InputMoments]) -> list[InputMoments]:
    """The moments of each distinct input a group reads (q, k, v of one layer read one input: counted once)."""
    keys = list(dict.fromkeys(member.input_key for member in group.members))
    return [moments[key] for key in keys]


def group_transform(
    method: Method,
    group: Group,
    moments: Mapping[str, InputMoments],
    fisher: Mapping[str, torch.Tensor] | None,
    asvd_alpha: float = 0.5,
    factorisation: str = "cholesky",
) -> Transform:
    """The transform S of ``group`` under ``method`` (pooled over the group's distinct inputs); whitening
    factorises C by ``factorisation`` ("cholesky" with its eigen fallback, or "eigen")."""
    if method.weighting == "identity":
        return IDENTITY
    if method.weighting == "fisher":
        if fisher is None:
            raise ValueError("fwsvd needs Fisher information")
        F = sum(fisher[member.id] for member in group.members)
        return diagonal(F.sqrt(), f"Fisher information of {group.id}")
    pooled = InputMoments.pooled(distinct_inputs(group, moments))
    if method.weighting == "abs-mean":
        return diagonal(pooled.abs_mean.pow(asvd_alpha), f"activation scales of {group.id}")
    return whitening(pooled.second, group.id, factorisation)
