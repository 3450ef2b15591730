"""Distillation as a stage of ``compress`` (SPEC §5): planned and checked before any heavy work, run after the
closed form, for every method alike.

The closed-form model can be handed to a callback (``on_closed_form``: the command line writes its checkpoint)
before the first step, so an interrupted or failed refinement never loses it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ngc.errors import UsageError
from ngc.refine.data import DistillWindows, RefinementData, calibration_fallback, split_windows
from ngc.refine.distill import distill, factor_parameters
from ngc.refine.options import DistillOptions, distill_options

log = logging.getLogger(__name__)

ClosedFormCallback = Callable[[nn.Module, Any], None]  # (model, CompressionResult) before the first step


@dataclass(frozen=True)
class DistillPlan:
    data: DistillWindows
    options: DistillOptions


def plan_distillation(
    config: Any, windows: torch.Tensor | None, refinement: RefinementData | None, seed: int
) -> DistillPlan | None:
    """The windows and settings distillation will use (None when ``config`` does not distil); refuses bad input
    (data shorter than one window, a budget smaller than one step) before the model is touched."""
    if not config.refines("distill"):
        if refinement is not None:
            raise UsageError(
                f"refinement data was given, but the refinement is {config.refine!r}",
                hint="refinement data is read by distillation: use refine='distill' (--refine distill)",
            )
        return None
    if windows is None:
        raise UsageError("distillation needs calibration windows", hint="pass CalibrationWindows")
    window_len = int(windows.shape[1])
    options = distill_options(config, window_len, seed)  # the budget first: it needs no data
    if refinement is None:
        if config.refine_data is not None:
            raise UsageError(
                f"the config names refinement data {config.refine_data!r}, but no refinement tokens were passed",
                hint="pass refinement=ngc.refine.data.refinement_data(tokenizer, NAME) to compress",
            )
        data = calibration_fallback(windows)
    else:
        data = split_windows(refinement, window_len, config.refine_heldout)
    return DistillPlan(data, options)


def run_distillation_(
    model: nn.Module,
    teacher: nn.Module,
    result: Any,
    plan: DistillPlan,
    on_closed_form: ClosedFormCallback | None = None,
) -> None:
    """Distil ``model`` in place; fills ``result.distill`` and adds the run's warnings to ``result.warnings``."""
    if not factor_parameters(model):
        raise UsageError(
            f"method {result.config.method} left no factorised block to distil (every block stayed dense)",
            hint="use --refine none, or a ratio at which the blocks are factorised",
        )
    if plan.data.provenance["source"] == "calibration windows":
        result.warnings.append(
            f"distillation trained on the {plan.data.provenance['train_windows']} calibration windows only, without "
            "a held-out slice (no refinement data was given)"
        )
    if on_closed_form is not None:
        result.distill = {"mode": "distill", "status": "pending", "data": plan.data.provenance}
        on_closed_form(model, result)
    report = distill(model, teacher, plan.data, plan.options)
    result.distill = report.to_dict()
    result.warnings.extend(report.warnings)
    for warning in report.warnings:
        log.warning(warning)
