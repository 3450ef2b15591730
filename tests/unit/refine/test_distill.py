"""Distillation (SPEC §5): token budgets, held-out early stopping, the non-finite guard, interruption, every method."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from ngc.accounting import account
from ngc.api import compress
from ngc.config import CompressionConfig
from ngc.data.windows import CalibrationWindows
from ngc.errors import DataFormatError, UsageError
from ngc.fit.methods import METHODS
from ngc.models.tiny import build_tiny_model, tiny_families
from ngc.modules.factorized import FactorizedLinear
from ngc.refine import distill as distill_module
from ngc.refine.data import RefinementData, split_windows
from ngc.refine.distill import SplitModel, _window_kl, distill, factor_parameters, kl_to_teacher
from ngc.refine.options import DistillOptions, distill_options, steps_for_budget

WINDOW = 16


def calibration(n_windows: int = 4, window_len: int = WINDOW, seed: int = 0) -> CalibrationWindows:
    tokens = torch.randint(0, 250, (n_windows, window_len), generator=torch.Generator().manual_seed(seed))
    return CalibrationWindows(tokens, "random", None, seed)


def stream(n_tokens: int, seed: int = 1) -> RefinementData:
    tokens = torch.randint(0, 250, (n_tokens,), generator=torch.Generator().manual_seed(seed))
    return RefinementData(tokens, "random stream", None)


def compressed(method: str = "ngc", ratio: float = 0.5) -> torch.nn.Module:
    model = build_tiny_model("llama").eval()
    compress(model, CompressionConfig(method=method, ratio=ratio, sequential=False), calibration())
    return model


def mean_kl(student, teacher, windows: torch.Tensor) -> float:
    with torch.no_grad():
        return float(kl_to_teacher(student(input_ids=windows).logits, teacher(input_ids=windows).logits))


def factors(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in factor_parameters(model)]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# --- pieces ---


@pytest.mark.parametrize("family", tiny_families())
def test_the_split_model_gives_the_models_own_logits(family):
    model = build_tiny_model(family).eval()
    ids = torch.randint(0, 250, (2, 12), generator=torch.Generator().manual_seed(0))
    split = SplitModel(model)
    with torch.no_grad():
        torch.testing.assert_close(split.logits(split.states(ids)), model(input_ids=ids).logits)


def test_chunked_kl_and_its_gradient_match_the_whole_logits_reference():
    student, teacher = compressed(), build_tiny_model("llama").eval()
    ids = calibration(2, 20).tokens
    params = factor_parameters(student)
    reference = kl_to_teacher(student(input_ids=ids).logits, teacher(input_ids=ids).logits.detach())
    expected = torch.autograd.grad(reference, params)
    for p in params:
        p.grad = None
    split_student, split_teacher = SplitModel(student), SplitModel(teacher)
    with torch.no_grad():
        target = split_teacher.states(ids)
    value = _window_kl(split_student, split_teacher, target, ids, 1.0 / ids.numel(), 7, train=True)
    assert value == pytest.approx(float(reference.detach()), rel=1e-5)
    for p, grad in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad, grad, rtol=1e-4, atol=1e-7)


def test_warm_up_then_cosine_schedule():
    options = DistillOptions(steps=20, warmup=0.1)  # 2 warm-up steps
    assert [options.lr_factor(s) for s in (0, 1)] == pytest.approx([1 / 3, 2 / 3])
    assert options.lr_factor(2) == 1.0
    assert options.lr_factor(11) == pytest.approx(0.5)  # half way through the 18 decay steps
    assert options.lr_factor(19) == pytest.approx(0.5 * (1 + math.cos(math.pi * 17 / 18)))
    assert DistillOptions(steps=5, warmup=0.0).lr_factor(0) == 1.0


def test_windows_are_cut_without_overlap_and_the_tail_is_held_out():
    data = stream(100)
    windows = split_windows(data, WINDOW, heldout_tokens=20)  # 6 windows, 2 held out
    assert windows.train.shape == (4, WINDOW) and windows.heldout.shape == (2, WINDOW)
    assert torch.equal(torch.cat([windows.train, windows.heldout]).flatten(), data.tokens[: 6 * WINDOW])
    with_bos = split_windows(RefinementData(data.tokens, "s", None, bos_token_id=257), WINDOW, 0)
    assert (with_bos.train[:, 0] == 257).all() and torch.equal(with_bos.train[0, 1:], data.tokens[: WINDOW - 1])


# --- budgets ---


def test_the_token_budget_sets_the_steps():
    assert steps_for_budget(1000, 2, 1, WINDOW) == 1000 // (2 * WINDOW)
    assert steps_for_budget(1000, 2, 3, WINDOW) == 1000 // (2 * 3 * WINDOW)
    config = CompressionConfig(
        method="ngc", ratio=0.5, sequential=False, refine="distill", refine_tokens=200, refine_batch=2, refine_heldout=0
    )
    model = build_tiny_model("llama")
    result = compress(model, config, calibration(), refinement=stream(400))
    assert result.distill["steps"] == result.distill["steps_run"] == 200 // (2 * WINDOW)
    assert result.distill["tokens"] == 6 * 2 * WINDOW
    assert result.distill["data"]["train_windows"] == 400 // WINDOW


def test_a_budget_smaller_than_one_step_is_refused_before_any_work():
    config = CompressionConfig(method="ngc", ratio=0.5, refine="distill", refine_tokens=WINDOW * 2 - 1, refine_batch=2)
    with pytest.raises(UsageError, match="smaller than one step of 2 x 1 windows"):
        distill_options(config, WINDOW)
    model = build_tiny_model("llama")
    with pytest.raises(UsageError, match="smaller than one step"):
        compress(model, config, calibration(), refinement=stream(400))
    assert not any(isinstance(m, FactorizedLinear) for m in model.modules())  # refused before the fit


def test_both_steps_and_tokens_are_refused():
    with pytest.raises(UsageError, match="both --refine-steps and --refine-tokens"):
        CompressionConfig(method="ngc", ratio=0.5, refine="distill", refine_steps=5, refine_tokens=500)


def test_a_refinement_corpus_shorter_than_one_window_is_refused():
    with pytest.raises(DataFormatError, match="fewer than one window of 16"):
        split_windows(stream(WINDOW - 1), WINDOW, 0)
    with pytest.raises(DataFormatError, match="too few for a held-out slice"):
        split_windows(stream(2 * WINDOW), WINDOW, 2 * WINDOW)  # the held-out slice would take every window
    model = build_tiny_model("llama")
    config = CompressionConfig(method="ngc", ratio=0.5, refine="distill", refine_heldout=0)
    with pytest.raises(DataFormatError, match="fewer than one window"):
        compress(model, config, calibration(), refinement=stream(5))


# --- every method, structure unchanged ---


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_gets_the_same_refinement_and_keeps_its_structure(method):
    calib = calibration()
    plain = build_tiny_model("llama")
    compress(plain, CompressionConfig(method=method, ratio=0.5), calib)
    model = build_tiny_model("llama")
    config = CompressionConfig(
        method=method, ratio=0.5, refine="distill", refine_tokens=12 * WINDOW, refine_lr=1e-2, refine_heldout=0
    )
    result = compress(model, config, calib, refinement=stream(8 * WINDOW))
    assert result.distill["status"] == "done" and result.distill["steps_run"] == 12
    assert account(model).model_params_kept == account(plain).model_params_kept == result.accounting.model_params_kept
    shapes = [tuple(p.shape) for p in factor_parameters(model)]
    assert shapes == [tuple(p.shape) for p in factor_parameters(plain)]
    dense = build_tiny_model("llama").eval()
    windows = split_windows(stream(8 * WINDOW), WINDOW, 0).train
    assert mean_kl(model, dense, windows) < mean_kl(plain, dense, windows)


def test_a_model_without_factors_is_refused():
    model = build_tiny_model("llama")
    with pytest.raises(UsageError, match="no factors to train"):
        distill(model, copy.deepcopy(model), calibration().tokens, DistillOptions(steps=2))


# --- held-out early stopping ---


def test_early_stopping_keeps_the_best_factors_when_the_heldout_kl_rises():
    student, teacher = compressed(), build_tiny_model("llama").eval()
    closed_form = factors(student)
    data = split_windows(stream(10 * WINDOW), WINDOW, 2 * WINDOW)
    before = mean_kl(student, teacher, data.heldout)
    # a step of about half of each factor's magnitude: far past the optimum, the held-out KL rises at once
    report = distill(student, teacher, data, DistillOptions(steps=20, lr=0.5, warmup=0.0, eval_every=1, patience=2))
    assert report.status == "stopped-early" and report.steps_run == 2
    assert [step for step, _ in report.heldout] == [0, 1, 2]
    assert report.heldout[1][1] > report.heldout[0][1] and report.heldout[0][1] == pytest.approx(before, rel=1e-5)
    assert report.best_step == 0 and same(factors(student), closed_form)
    assert any("kept the factors of step 0" in w for w in report.warnings)


def test_early_stopping_keeps_the_last_factors_while_the_heldout_kl_falls():
    student, teacher = compressed(), build_tiny_model("llama").eval()
    data = split_windows(stream(10 * WINDOW), WINDOW, 2 * WINDOW)
    before = mean_kl(student, teacher, data.heldout)
    report = distill(student, teacher, data, DistillOptions(steps=8, lr=1e-2, eval_every=4))
    assert report.status == "done" and [s for s, _ in report.heldout] == [0, 4, 8]
    best = min(kl for _, kl in report.heldout)
    assert best < before and mean_kl(student, teacher, data.heldout) == pytest.approx(best, rel=1e-4)


# --- the non-finite guard and interruption ---


def test_a_learning_rate_that_makes_the_loss_non_finite_restores_the_closed_form():
    calib = calibration()
    plain = build_tiny_model("llama")
    compress(plain, CompressionConfig(method="ngc", ratio=0.5, sequential=False, refine="none"), calib)
    model = build_tiny_model("llama")
    config = CompressionConfig(
        method="ngc", ratio=0.5, sequential=False, refine="distill", refine_steps=6, refine_lr=1e30
    )
    result = compress(model, config, calib)
    assert result.distill["status"] == "diverged"
    assert any("became non-finite" in w and "pre-refinement factors were restored" in w for w in result.warnings)
    assert same(factors(model), factors(plain))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_an_interrupted_run_leaves_the_pre_refinement_factors(monkeypatch):
    student, teacher = compressed(), build_tiny_model("llama").eval()
    closed_form = factors(student)
    calls = []
    step = distill_module._Run.step

    def interrupted(self, index):
        calls.append(index)
        if index == 2:
            raise KeyboardInterrupt
        return step(self, index)

    monkeypatch.setattr(distill_module._Run, "step", interrupted)
    flags = [p.requires_grad for p in student.parameters()]
    with pytest.raises(KeyboardInterrupt):
        distill(student, teacher, calibration().tokens, DistillOptions(steps=5, lr=1e-2))
    assert calls == [0, 1, 2] and same(factors(student), closed_form)
    assert [p.requires_grad for p in student.parameters()] == flags


def test_teacher_states_are_computed_once_per_window_while_they_fit():
    student, teacher = compressed(), build_tiny_model("llama").eval()
    windows = calibration(2).tokens
    runs = {}
    for capacity in (2**30, 0):
        copied = copy.deepcopy(student)
        params = factor_parameters(copied)
        for p in copied.parameters():
            p.requires_grad_(any(p is q for q in params))
        options = DistillOptions(steps=6, teacher_cache_bytes=capacity)
        run = distill_module._Run(copied, teacher, distill_module.calibration_fallback(windows), options, params)
        for index in range(6):
            run.step(index)
        runs[capacity] = run.targets.passes
    assert runs == {2**30: 2, 0: 6}


def test_refinement_fields_round_trip():
    config = CompressionConfig(
        method="ngc",
        ratio=0.3,
        refine="distill",
        refine_data="wikitext2",
        refine_tokens=10**5,
        refine_batch=4,
        refine_accum=2,
        refine_warmup=0.1,
        refine_heldout=2048,
        refine_eval_every=5,
        refine_patience=0,
    )
    assert CompressionConfig.from_dict(config.to_dict()) == config


def test_the_default_heldout_slice_shrinks_with_short_data():
    assert len(split_windows(stream(3000 * WINDOW), WINDOW, None).heldout) == 4096 // WINDOW
    assert len(split_windows(stream(25 * WINDOW), WINDOW, None).heldout) == 2  # one window in ten
    assert len(split_windows(stream(9 * WINDOW), WINDOW, None).heldout) == 0


# --- closed form -> block-wise -> distillation ---


def test_block_then_distill_composes_and_each_stage_runs_its_own_steps():
    calib = calibration()
    block_only = build_tiny_model("llama")
    compress(block_only, CompressionConfig(method="ngc", ratio=0.5, refine="block", alloc="uniform"), calib)
    model = build_tiny_model("llama")
    config = CompressionConfig(
        method="ngc",
        ratio=0.5,
        alloc="uniform",
        refine="block+distill",
        refine_tokens=8 * WINDOW,
        refine_lr=1e-2,
        refine_heldout=0,
    )
    assert config.refine_stages == ("block", "distill") and config.steps_for("block") == 25
    result = compress(model, config, calib, refinement=stream(8 * WINDOW))
    # the block stage ran during the pipeline (its 25 default steps per layer), distillation after it
    assert set(result.block) == {"L0", "L1"} and all(r["steps"] == 25 for r in result.block.values())
    assert result.distill["status"] == "done" and result.distill["steps_run"] == 8
    assert account(model).model_params_kept == account(block_only).model_params_kept
    dense = build_tiny_model("llama").eval()
    windows = split_windows(stream(8 * WINDOW), WINDOW, 0).train
    assert mean_kl(model, dense, windows) < mean_kl(block_only, dense, windows)


def test_refinement_chains_are_checked():
    assert CompressionConfig(method="ngc", refine="block+distill", refine_steps=7).steps_for("distill") == 7
    assert CompressionConfig(method="ngc", refine="local+distill").steps_for("local") == 50
    assert CompressionConfig(method="ngc", refine="none").refine_stages == ()
    for chain in ("distill+block", "block+local", "block+block", "block+"):
        with pytest.raises(UsageError, match="unknown refinement") as info:
            CompressionConfig(method="ngc", refine=chain)
        assert "block+distill" in info.value.hint
