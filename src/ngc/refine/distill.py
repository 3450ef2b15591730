"""Whole-model distillation (SPEC §5): all factors trained jointly to match the dense model's next-token
distribution, KL(dense || compressed), with a token budget, warm-up and early stopping on a held-out slice.

Only the factors (``A`` of every :class:`FactorizedLinear`, ``B`` of every :class:`GroupBasis`) are trained and
hold optimizer state; embeddings, norms, biases, dense blocks and the output head stay frozen, so the structure
and the parameter count never change.

What one step costs, and why (measured in ``benchmarks/distill_step.py``):

- the model is split at its last hidden state (body, then output head): the vocabulary-wide logits of a window
  exist one chunk of ``chunk_tokens`` positions at a time, for the student and the teacher alike. The chunk's KL
  is backpropagated into the hidden state at once, then the body's backward runs once for the whole window;
- the head is frozen and shared, so the teacher is needed only up to its final hidden state: those states
  (``L x d`` per window, not ``L x vocab``) are computed once per window and kept while they fit in
  ``teacher_cache_bytes``; a window seen again costs no teacher pass;
- no KV cache is built, and Adam runs fused over the factors only.

A non-finite loss stops the run and puts the pre-refinement factors back; so does an exception (an interrupted
run), which is then re-raised. With a held-out slice the best factors seen at an evaluation are kept.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ngc.errors import UsageError
from ngc.modules.factorized import FactorizedLinear, GroupBasis
from ngc.progress import progress
from ngc.refine.data import DistillWindows, calibration_fallback
from ngc.refine.options import DistillOptions


@dataclass
class DistillReport:
    steps: int  # planned optimizer steps
    options: dict
    data: dict
    mode: str = "distill"
    status: str = "done"  # done | stopped-early | diverged
    steps_run: int = 0
    tokens: int = 0  # training tokens read
    losses: list[float] = field(default_factory=list)  # training KL per step
    heldout: list[tuple[int, float]] = field(default_factory=list)  # (steps done, held-out KL)
    best_step: int | None = None  # steps done when the kept factors were seen (held-out runs)
    step_seconds: list[float] = field(default_factory=list)  # wall clock
    step_cpu_seconds: list[float] = field(default_factory=list)  # this process's CPU time (robust on a shared machine)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "status": self.status,
            "steps": self.steps,
            "steps_run": self.steps_run,
            "tokens": self.tokens,
            "first_losses": self.losses[:5],
            "last_losses": self.losses[-5:],
            "heldout": [list(point) for point in self.heldout],
            "best_step": self.best_step,
            "median_step_seconds": statistics.median(self.step_seconds) if self.step_seconds else None,
            "median_step_cpu_seconds": statistics.median(self.step_cpu_seconds) if self.step_cpu_seconds else None,
            "seconds": self.seconds,
            "options": self.options,
            "data": self.data,
            "warnings": self.warnings,
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
    """Mean over tokens of KL(teacher || student) of the next-token distributions (the reference: whole logits)."""
    vocab = student_logits.shape[-1]
    return _kl_sum(student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab)) / (
        student_logits.numel() // vocab
    )


def _kl_sum(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Sum over positions of KL(teacher || student), in float32 (a no-op cast for float32 models)."""
    log_q = F.log_softmax(student_logits.float(), dim=-1)
    log_p = F.log_softmax(teacher_logits.float(), dim=-1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="sum")


class SplitModel:
    """A causal LM split at its last hidden state: ``states`` (decoder and final norm), ``logits`` (output head)."""

    def __init__(self, model: nn.Module) -> None:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        body = getattr(model, "base_model", None)
        if head is None or body is None or body is model:
            raise UsageError(
                f"distillation needs a causal LM with a separate output head; {type(model).__name__} has none",
                hint="load the model with ngc.load_model (a transformers *ForCausalLM model)",
            )
        self.body, self.head = body, head
        self.softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)

    def states(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, L, d) final hidden states."""
        return self.body(input_ids=ids, use_cache=False).last_hidden_state

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        z = self.head(states)  # (B, T, vocab)
        return z if not self.softcap else torch.tanh(z / self.softcap) * self.softcap


class TeacherStates:
    """The teacher's final hidden states per window, computed once and kept while they fit in the cache."""

    def __init__(self, teacher: SplitModel, capacity_bytes: int) -> None:
        self.teacher = teacher
        self.capacity_bytes = capacity_bytes
        self.kept: dict[tuple[str, int], torch.Tensor] = {}
        self.kept_bytes = 0
        self.passes = 0  # windows run through the teacher

    @torch.no_grad()
    def get(self, part: str, indices: list[int], windows: torch.Tensor, device: torch.device) -> torch.Tensor:
        missing = [i for i in indices if (part, i) not in self.kept]
        computed: dict[int, torch.Tensor] = {}
        if missing:
            states = self.teacher.states(windows[missing].to(device))  # (len(missing), L, d)
            self.passes += len(missing)
            for i, state in zip(missing, states, strict=True):
                state = state.clone() if len(missing) > 1 else state  # a kept view would pin the whole batch
                computed[i] = state
                size = state.numel() * state.element_size()
                if self.kept_bytes + size <= self.capacity_bytes:
                    self.kept[(part, i)] = state
                    self.kept_bytes += size
        return torch.stack([computed[i] if i in computed else self.kept[(part, i)] for i in indices])


def _window_kl(
    student: SplitModel,
    teacher: SplitModel,
    target_states: torch.Tensor,
    ids: torch.Tensor,
    scale: float,
    chunk_tokens: int,
    train: bool,
) -> float:
    """``scale`` x the summed KL of a batch of windows; with ``train`` its gradient is accumulated into the factors.

    The logits of the student and the teacher exist one chunk of positions at a time; each chunk's gradient goes
    into the final hidden state, and the body's backward runs once.
    """
    states = student.states(ids)  # (B, L, d)
    leaf = states.detach().requires_grad_(train)
    total = 0.0
    for start in range(0, ids.shape[1], chunk_tokens):
        window = slice(start, start + chunk_tokens)
        with torch.no_grad():
            target = teacher.logits(target_states[:, window])  # (B, T, vocab)
        with torch.set_grad_enabled(train):
            loss = _kl_sum(student.logits(leaf[:, window]).flatten(0, 1), target.flatten(0, 1)) * scale
        if train:
            loss.backward()
        total += float(loss.detach())
    if train and math.isfinite(total):
        states.backward(leaf.grad)
    return total


def _window_order(n_windows: int, seed: int) -> Iterator[int]:
    """Window indices, epoch after epoch, each epoch in its own seeded order."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield from torch.randperm(n_windows, generator=generator).tolist()


def _snapshot(params: list[nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


@torch.no_grad()
def _restore(params: list[nn.Parameter], saved: list[torch.Tensor]) -> None:
    for p, value in zip(params, saved, strict=True):
        p.copy_(value)


def _optimizer(params: list[nn.Parameter], lr: float) -> tuple[torch.optim.Adam, list[float]]:
    """Adam on the factors only; lr is relative: each tensor steps by about lr x its mean |entry|."""
    base_lrs = [lr * (float(p.detach().abs().mean()) or 1.0) for p in params]
    groups = [{"params": [p], "lr": base} for p, base in zip(params, base_lrs, strict=True)]
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return torch.optim.Adam(groups, fused=fused or None), base_lrs


class _Run:
    """The state of one distillation run (kept apart so that each stage is a small method)."""

    def __init__(self, student, teacher, data: DistillWindows, options: DistillOptions, params) -> None:
        self.student, self.teacher = SplitModel(student), SplitModel(teacher)
        self.data, self.options, self.params = data, options, params
        self.device = params[0].device
        self.targets = TeacherStates(self.teacher, options.teacher_cache_bytes)
        self.optimizer, self.base_lrs = _optimizer(params, options.lr)
        self.order = _window_order(len(data.train), options.seed)

    def step(self, step: int) -> float:
        """One optimizer step over ``batch x accumulate`` windows; returns the mean training KL."""
        options = self.options
        self.optimizer.zero_grad(set_to_none=True)
        scale = 1.0 / (options.batch * options.accumulate * self.data.window_len)
        total = 0.0
        for _ in range(options.accumulate):
            indices = [next(self.order) for _ in range(options.batch)]
            target = self.targets.get("train", indices, self.data.train, self.device)
            ids = self.data.train[indices].to(self.device)
            total += _window_kl(self.student, self.teacher, target, ids, scale, options.chunk_tokens, True)
            if not math.isfinite(total):
                return total
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * options.lr_factor(step)
        self.optimizer.step()
        return total

    @torch.no_grad()
    def heldout_kl(self) -> float:
        """Mean KL per token over the held-out windows."""
        windows = self.data.heldout
        scale = 1.0 / windows.numel()
        total = 0.0
        for start in range(0, len(windows), self.options.batch):
            indices = list(range(start, min(start + self.options.batch, len(windows))))
            target = self.targets.get("heldout", indices, windows, self.device)
            ids = windows[indices].to(self.device)
            total += _window_kl(self.student, self.teacher, target, ids, scale, self.options.chunk_tokens, False)
        return total


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: DistillWindows | torch.Tensor,
    options: DistillOptions,
) -> DistillReport:
    """Train ``student``'s factors for ``options.steps`` steps to match ``teacher`` on ``data``; in place.

    ``data``: training and held-out windows (:func:`ngc.refine.data.split_windows`), or a plain (N, L) tensor of
    windows (no held-out slice). Returns what ran: steps, tokens, losses, held-out curve, status and warnings.
    """
    if isinstance(data, torch.Tensor):
        data = calibration_fallback(data)
    params = factor_parameters(student)
    if not params:
        raise UsageError(
            "distillation found no factors to train: the model has no factorised block",
            hint="distil a model compressed by ngc.compress (every method factorises its blocks)",
        )
    start = time.perf_counter()
    report = DistillReport(options.steps, asdict(options), dict(data.provenance))
    frozen = {p: p.requires_grad for p in student.parameters()}
    was_training = student.training
    for p in student.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    teacher.eval()
    student.eval()  # no dropout: the student should match the teacher's deterministic outputs
    initial = _snapshot(params)
    try:
        _train(_Run(student, teacher, data, options, params), report, initial)
    except BaseException:  # an interrupted or failed run leaves the pre-refinement factors, then re-raises
        _restore(params, initial)
        raise
    finally:
        for p, flag in frozen.items():
            p.requires_grad_(flag)
        student.train(was_training)
        for module in student.modules():
            if isinstance(module, GroupBasis):
                module.forget()
    report.seconds = time.perf_counter() - start
    return report


def _train(run: _Run, report: DistillReport, initial: list[torch.Tensor]) -> None:
    options, params = run.options, run.params
    has_heldout = len(run.data.heldout) > 0
    best, best_factors, since_best = math.inf, initial, 0
    if has_heldout:
        best = run.heldout_kl()
        report.heldout.append((0, best))
        report.best_step = 0
        if not math.isfinite(best):
            _diverged(report, params, initial, 0, "the held-out KL of the closed-form model")
            return
    interval = options.evaluation_interval()
    for step in progress(range(options.steps), desc="distillation (steps)", unit="step"):
        began, began_cpu = time.perf_counter(), time.process_time()
        loss = run.step(step)
        report.step_seconds.append(time.perf_counter() - began)
        report.step_cpu_seconds.append(time.process_time() - began_cpu)
        if not math.isfinite(loss):
            _diverged(report, params, initial, step, "the training loss")
            return
        report.losses.append(loss)
        report.steps_run = step + 1
        report.tokens += options.tokens_per_step(run.data.window_len)
        if has_heldout and (report.steps_run % interval == 0 or report.steps_run == options.steps):
            kl = run.heldout_kl()
            report.heldout.append((report.steps_run, kl))
            if not math.isfinite(kl):
                _diverged(report, params, initial, report.steps_run, "the held-out KL")
                return
            if kl < best:
                best, best_factors, since_best, report.best_step = kl, _snapshot(params), 0, report.steps_run
            else:
                since_best += 1
                if options.patience and since_best >= options.patience:
                    report.status = "stopped-early"
                    break
    if has_heldout and report.best_step != report.steps_run:
        _restore(params, best_factors)
        report.warnings.append(
            f"distillation kept the factors of step {report.best_step} (lowest held-out KL {best:.4g}), not of the "
            f"last step {report.steps_run}"
        )
    if not all(bool(torch.isfinite(p).all()) for p in params):
        _diverged(report, params, initial, report.steps_run, "the factors")


def _diverged(report: DistillReport, params, initial, step: int, what: str) -> None:
    _restore(params, initial)
    report.status = "diverged"
    report.warnings.append(
        f"distillation stopped at step {step}: {what} became non-finite (relative lr {report.options['lr']:g}); the "
        "pre-refinement factors were restored. Lower --refine-lr"
    )
