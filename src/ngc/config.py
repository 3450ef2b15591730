"""Small frozen configs; ``to_dict``/``from_dict`` round-trip them through JSON (checkpoint manifests)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from ngc.arch import ROLES
from ngc.errors import UsageError

ALLOCATIONS = ("uniform", "auto", "auto-energy", "v2", "zero-sum", "loss")
#: allocations that keep each group (or matrix) at ``alloc_floor`` x its uniform rank at least
FLOORED_ALLOCATIONS = ("auto", "auto-energy", "zero-sum", "loss")
#: allocations that score components by the mean calibration gradient (backward passes through the whole model)
GRADIENT_ALLOCATIONS = ("zero-sum", "loss")
REFINE_STEPS = {"local": 50, "distill": 100, "block": 25}  # default steps per refinement mode
#: refinements that compose: a per-layer one during the pipeline, then distillation of the whole model (SPEC §5)
REFINE_CHAINS = ("local+distill", "block+distill")
WHITENINGS = ("cholesky", "eigen")  # how C = S Sᵀ is factorised (SPEC §4)
#: the fields a method's defaults fill when left unset (``ngc.fit.methods``), each with its value where the method
#: names none
METHOD_DEFAULT_FIELDS: dict[str, object] = {
    "alloc": "uniform",
    "alloc_floor": 0.0,
    "sequential": False,
    "sequential_shrink": 0.1,
    "refine": "none",
    "whitening": "cholesky",
}


@dataclass(frozen=True)
class CalibConfig:
    """Calibration windows (SPEC §7): ``n_windows`` x ``window_len`` tokens from ``source``, seeded."""

    source: str = "wikitext2"
    n_windows: int = 32
    window_len: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_windows < 1 or self.window_len < 2:
            raise UsageError(
                f"calibration needs at least 1 window of 2 tokens, got {self.n_windows} x {self.window_len}",
                hint="use --calib-samples >= 1 and --calib-len >= 2",
            )


@dataclass(frozen=True)
class CompressionConfig:
    """What to compress and how. ``ratio`` is the fraction of decoder linear weights removed (SPEC §3)."""

    method: str = "svd-llm"
    ratio: float = 0.3
    roles: tuple[str, ...] = ROLES
    topology: str | None = None  # None = the method's own structure
    alloc: str | None = None  # "uniform" (each group keeps 1-R) or "auto" (greedy); None = the method's default
    alloc_floor: float | None = None  # auto, zero-sum and loss allocations keep at least this fraction of each
    # group's (zero-sum, loss: each matrix's) uniform rank; None = the method's default (0; ngc: 0.5 from R = 0.5)
    sequential: bool | None = None  # fit on inputs from the compressed prefix (SPEC §4); None = method default
    sequential_shrink: float | None = None  # ridge λ of the sequential target / mean diag C̃ (0 = exact); None =
    # the method's default (0.1; ngc: 1 below R = 0.5; aa-svd: 0, its anchored objective)
    exact: bool = False  # refine groups whose members read different inputs by alternating solves (SPEC §4)
    refine: str | None = None  # SPEC §5: "none", "local" (per-group output MSE), "block" (each decoder layer's
    # output MSE), "distill" (KL to the dense model); None = the method's default (aa-svd: block, else none)
    refine_steps: int = 0  # 0 = the mode's default (REFINE_STEPS)
    refine_lr: float = 1e-3  # relative step: about this fraction of each factor's mean magnitude
    # distillation (SPEC §5; ngc.refine.options): data, token budget, batch, schedule, held-out early stopping
    refine_data: str | None = None  # corpus name or text file; None = the calibration corpus's split, all of it
    refine_tokens: int = 0  # token budget (steps = tokens // (batch x accum x window)); 0 = refine_steps
    refine_batch: int = 1  # windows per forward pass
    refine_accum: int = 1  # forward passes per optimizer step
    refine_warmup: float = 0.05  # fraction of the steps with a linear warm-up, then cosine decay
    refine_heldout: int | None = None  # tokens held out (whole windows at the data's end) for early stopping;
    # 0 = none; None = 4096, or one window in ten of shorter data
    refine_eval_every: int = 0  # held-out KL every K steps; 0 = about ten times per run
    refine_patience: int = 3  # evaluations without improvement before stopping; 0 = never stop early
    asvd_alpha: float = 0.5
    whitening: str | None = None  # "cholesky" (checked, eigen fallback) or "eigen"; None = the method's default
    rank_multiple: int = 1  # round every rank down to a multiple of this (8 to 128 for GPU kernels)
    version: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio < 1.0:
            raise UsageError(
                f"ratio {self.ratio} is outside (0, 1)",
                hint="the ratio is the fraction of decoder linear parameters removed, e.g. 0.3 keeps 70 %",
            )
        from ngc.fit.methods import get_method

        defaults = get_method(self.method).defaults_at(self.ratio)
        for name, fallback in METHOD_DEFAULT_FIELDS.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, defaults.get(name, fallback))
        if self.refine not in REFINE_STEPS and self.refine not in REFINE_CHAINS and self.refine != "none":
            raise UsageError(
                f"unknown refinement {self.refine!r}",
                hint=f"use none, local, block, distill, or a chain: {', '.join(REFINE_CHAINS)}",
            )
        if self.whitening not in WHITENINGS:
            raise UsageError(f"unknown whitening {self.whitening!r}", hint=f"use one of {', '.join(WHITENINGS)}")
        if not 0.0 <= self.alloc_floor <= 1.0:
            raise UsageError(
                f"allocation floor {self.alloc_floor} is outside [0, 1]",
                hint="it is the fraction of each group's uniform rank kept at least, e.g. --alloc-floor 0.5",
            )
        if self.sequential_shrink < 0:
            raise UsageError(
                f"sequential shrink {self.sequential_shrink} is negative",
                hint="it is a ridge as a fraction of the mean input variance: 0 (exact) or more, "
                "e.g. --sequential-shrink 0.1",
            )
        if self.rank_multiple < 1:
            raise UsageError(f"rank multiple {self.rank_multiple} must be at least 1", hint="e.g. --rank-multiple 64")
        if self.refine_steps < 0 or self.refine_lr <= 0:
            raise UsageError("refinement needs steps >= 0 and a positive learning rate")
        from ngc.refine.options import check_refine_fields

        check_refine_fields(self)
        if self.alloc not in ALLOCATIONS:
            raise UsageError(f"unknown allocation {self.alloc!r}", hint=f"use one of {', '.join(ALLOCATIONS)}")
        object.__setattr__(self, "roles", tuple(self.roles))

    @property
    def refine_stages(self) -> tuple[str, ...]:
        """The refinements in the order they run: ``"block+distill"`` -> ``("block", "distill")``."""
        return () if self.refine == "none" else tuple(self.refine.split("+"))

    def refines(self, mode: str) -> bool:
        """Whether refinement ``mode`` ("local", "block" or "distill") is one of the stages."""
        return mode in self.refine_stages

    def steps_for(self, mode: str) -> int:
        """Steps of stage ``mode``: ``refine_steps`` for the last stage when given, else the mode's default."""
        stages = self.refine_stages
        if self.refine_steps and stages and mode == stages[-1]:
            return self.refine_steps
        return REFINE_STEPS.get(mode, 0)

    @property
    def steps(self) -> int:
        """Steps of the last refinement stage (0 without refinement)."""
        return self.steps_for(self.refine_stages[-1]) if self.refine_stages else 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["roles"] = list(self.roles)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if k == "roles" else v) for k, v in data.items() if k in known})


def made_with(stored: Mapping[str, Any], settings: Mapping[str, Any], ratio: float) -> bool:
    """Whether a stored configuration (a result's ``config``) is what ``settings`` give at ``ratio`` today: every
    field the settings name, and what the method's defaults resolve to (a result made under other defaults is
    another result). Fields a stored configuration predates are not compared, nor the ridge of an update that does
    not run, nor the floor of an allocation that has none."""
    expected = CompressionConfig(**settings, ratio=ratio).to_dict()
    defaults = [key for key in METHOD_DEFAULT_FIELDS if key in stored and key not in settings]
    if not expected["sequential"] and "sequential_shrink" in defaults:
        defaults.remove("sequential_shrink")
    if expected["alloc"] not in FLOORED_ALLOCATIONS and "alloc_floor" in defaults:
        defaults.remove("alloc_floor")
    return all(stored.get(key) == expected[key] for key in (*settings, "method", "ratio", *defaults))
