"""Settings of whole-model distillation (SPEC §5), derived from a :class:`~ngc.config.CompressionConfig`.

A budget is counted in tokens: one optimizer step reads ``batch x accumulate`` windows of ``window_len`` tokens,
so ``steps = tokens // (batch x accumulate x window_len)``. Pure Python (imported by the config's checks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ngc.errors import UsageError


@dataclass(frozen=True)
class DistillOptions:
    """How one distillation run trains (every field is checked by :func:`check_refine_fields`)."""

    steps: int  # optimizer steps
    lr: float = 1e-3  # relative: each factor steps by about lr x its mean |entry|
    batch: int = 1  # windows per forward pass
    accumulate: int = 1  # forward passes per optimizer step
    warmup: float = 0.05  # fraction of the steps with a linear warm-up; then cosine decay to 0
    eval_every: int = 0  # held-out KL every K steps (0: about ten times per run)
    patience: int = 3  # evaluations without improvement before stopping (0: never stop early)
    seed: int = 0  # order of the windows
    chunk_tokens: int = 128  # positions per chunk of the vocabulary-wide KL (one chunk of logits alive at a time)
    teacher_cache_bytes: int = 2**30  # the teacher's final hidden states are kept per window up to this size

    def tokens_per_step(self, window_len: int) -> int:
        return self.batch * self.accumulate * window_len

    def evaluation_interval(self) -> int:
        return self.eval_every or max(math.ceil(self.steps / 10), 1)

    def warmup_steps(self) -> int:
        return min(round(self.warmup * self.steps), self.steps)

    def lr_factor(self, step: int) -> float:
        """Multiplier of the base learning rate at 0-based ``step``: linear warm-up, then cosine decay."""
        warm = self.warmup_steps()
        if step < warm:
            return (step + 1) / (warm + 1)
        progress = (step - warm) / max(self.steps - warm, 1)
        return 0.5 * (1 + math.cos(math.pi * progress))


def steps_for_budget(tokens: int, batch: int, accumulate: int, window_len: int) -> int:
    """Optimizer steps a token budget pays for; refuses a budget smaller than one step."""
    per_step = batch * accumulate * window_len
    if tokens < per_step:
        raise UsageError(
            f"a refinement budget of {tokens} tokens is smaller than one step of {batch} x {accumulate} windows of "
            f"{window_len} tokens ({per_step} tokens)",
            hint=f"use --refine-tokens {per_step} or more, or a smaller --refine-batch / --refine-accum / --calib-len",
        )
    return tokens // per_step


def check_refine_fields(config: Any) -> None:
    """Range checks of the ``refine_*`` fields of a CompressionConfig (before any heavy work)."""
    if config.refine_tokens < 0:
        raise UsageError(f"--refine-tokens {config.refine_tokens} is negative", hint="give a token budget, e.g. 100000")
    if config.refine_tokens and config.refine_steps:
        raise UsageError(
            "both --refine-steps and --refine-tokens given",
            hint="give the budget one way: --refine-tokens N (steps follow from batch and window) or --refine-steps K",
        )
    for flag, value in (("--refine-batch", config.refine_batch), ("--refine-accum", config.refine_accum)):
        if value < 1:
            raise UsageError(f"{flag} {value} must be at least 1", hint=f"e.g. {flag} 1")
    if not 0.0 <= config.refine_warmup < 1.0:
        raise UsageError(
            f"--refine-warmup {config.refine_warmup} is outside [0, 1)", hint="it is a fraction of the steps, e.g. 0.05"
        )
    for flag, value in (
        ("--refine-heldout", config.refine_heldout or 0),
        ("--refine-eval-every", config.refine_eval_every),
        ("--refine-patience", config.refine_patience),
    ):
        if value < 0:
            raise UsageError(f"{flag} {value} is negative", hint=f"use {flag} 0 or more")


def distill_options(config: Any, window_len: int, seed: int = 0) -> DistillOptions:
    """The distillation settings of ``config`` for windows of ``window_len`` tokens."""
    if config.refine_tokens:
        steps = steps_for_budget(config.refine_tokens, config.refine_batch, config.refine_accum, window_len)
    else:
        steps = config.steps_for("distill")  # the explicit count, else the mode's default
    return DistillOptions(
        steps=steps,
        lr=config.refine_lr,
        batch=config.refine_batch,
        accumulate=config.refine_accum,
        warmup=config.refine_warmup,
        eval_every=config.refine_eval_every,
        patience=config.refine_patience,
        seed=seed,
    )
