"""Whole-model distillation (SPEC §5): all factors trained jointly to match the dense model's next-token
distribution, KL(dense || compressed), on calibration windows, for a fixed number of steps.

Only the factors (``A`` of every :class:`FactorizedLinear`, ``B`` of every :class:`GroupBasis`) are trained;
embeddings, norms, biases and dense blocks stay frozen, so the parameter count is unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ngc.modules.factorized import FactorizedLinear, GroupBasis
from ngc.progress import progress


@dataclass
class RefineReport:
    mode: str
    steps: int
    losses: list[float] = field(default_factory=list)  # per step
    seconds: float = 0.0

    def to_dict(self) -> dict:
        head = self.losses[: min(5, len(self.losses))]
        tail = self.losses[-5:]
        return {
            "mode": self.mode,
            "steps": self.steps,
            "first_losses": head,
            "last_losses": tail,
            "seconds": self.seconds,
        }


def factor_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every factor tensor once (a shared basis appears once)."""
    seen: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, FactorizedLinear):
            for A in module.A:
                seen.setdefault(id(A), A)
        elif isinstance(module, GroupBasis):
            seen.setdefault(id(module.B), module.B)
    return list(seen.values())


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(teacher || student) of the next-token distributions."""
    vocab = student_logits.shape[-1]
    log_q = F.log_softmax(student_logits.float().reshape(-1, vocab), dim=-1)
    log_p = F.log_softmax(teacher_logits.float().reshape(-1, vocab), dim=-1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")


def distill(
    student: nn.Module,
    teacher: nn.Module,
    windows: torch.Tensor,
    steps: int,
    lr: float = 1e-3,
    seed: int = 0,
) -> RefineReport:
    """``steps`` Adam steps, one calibration window each (cycling in a seeded order), cosine-decayed relative lr."""
    import time

    start = time.perf_counter()
    params = factor_parameters(student)
    frozen = {p: p.requires_grad for p in student.parameters()}
    for p in student.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    teacher.eval()
    was_training = student.training
    student.eval()  # no dropout: the student should match the teacher's deterministic outputs
    # lr is relative: each tensor steps by about lr times its mean absolute entry (A and B differ in scale)
    base_lrs = [lr * (float(p.detach().abs().mean()) or 1.0) for p in params]
    optimizer = torch.optim.Adam([{"params": [p], "lr": base} for p, base in zip(params, base_lrs, strict=True)])
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(seed)).tolist()
    device = next(student.parameters()).device
    report = RefineReport("distill", steps)
    try:
        for step in progress(range(steps), desc="distillation (steps)", unit="step"):
            ids = windows[order[step % len(order)]].unsqueeze(0).to(device)
            with torch.no_grad():
                target = teacher(input_ids=ids).logits
            loss = kl_to_teacher(student(input_ids=ids).logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            decay = 0.5 * (1 + math.cos(math.pi * step / max(steps, 1)))
            for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base * decay
            optimizer.step()
            report.losses.append(float(loss.detach()))
    finally:
        for p, flag in frozen.items():
            p.requires_grad_(flag)
        student.train(was_training)
        for module in student.modules():
            if isinstance(module, GroupBasis):
                module.forget()
    report.seconds = time.perf_counter() - start
    return report
