"""The per-item relation of dynamics to correctness (SPEC §8.4): statistics with known answers, and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ngc.cli import main as cli
from ngc.dynamics.hypothesis import relation


def test_a_feature_that_is_correctness_correlates_perfectly():
    correct = [True, False] * 20
    row = relation("f", [float(c) + 0.001 * i for i, c in enumerate(correct)], correct)
    assert row.r > 0.99 and row.ci_low > 0.95 and row.p_value < 0.01
    assert row.mean_correct > row.mean_wrong and row.n == 40 and row.n_correct == 20


def test_r_is_pearsons_and_unrelated_noise_is_not_significant():
    g = torch.Generator().manual_seed(3)
    values = torch.randn(300, generator=g).tolist()
    correct = (torch.rand(300, generator=g) < 0.5).tolist()
    row = relation("noise", values, correct)
    x, y = torch.tensor(values, dtype=torch.float64), torch.tensor(correct, dtype=torch.float64)
    assert row.r == pytest.approx(float(torch.corrcoef(torch.stack([x, y]))[0, 1]), abs=1e-12)
    assert row.ci_low < 0 < row.ci_high and row.p_value > 0.05


def test_non_finite_values_are_dropped_and_degenerate_cases_give_nan():
    row = relation("f", [1.0, math.nan, 2.0, 3.0, math.inf], [True, True, False, True, False])
    assert row.n == 3 and row.dropped == 2
    assert math.isnan(relation("f", [1.0, 2.0, 3.0], [True, True, True]).r)  # one class only
    with pytest.raises(ValueError, match="3 values for 2 items"):
        relation("f", [1.0, 2.0, 3.0], [True, False])


def test_dynamics_on_task_prompts_relates_them_to_correctness(capsys, tmp_path, tiny_folders, task_data_dir):
    out = tmp_path / "dyn"
    args = ["dynamics", str(tiny_folders["llama"]), "--task", "arc_easy", "--sequences", "4", "--length", "64"]
    args += ["--probes", "1", "--lanczos", "0", "--data-dir", str(task_data_dir), "--out", str(out)]
    assert cli.run(args) == 0
    payload = json.loads((out / "dynamics.json").read_text())
    assert payload["data"]["task"] == "arc_easy" and payload["data"]["used"] == 4
    assert [item["doc_id"] for item in payload["examples"]] == [0, 1, 2, 3]
    for item in payload["examples"]:
        assert item["tokens"] >= 8 and math.isfinite(item["driving_ratio"])
    assert set(payload["relation"]) == {"stability", "driving_ratio"}
    assert math.isnan(payload["layers"][0]["sym_top"])  # --lanczos 0 skips it
    assert (out / "hypothesis.png").stat().st_size > 0
    assert cli.run(["dynamics", str(tiny_folders["llama"]), "--task", "gsm8k", "--out", str(tmp_path / "x")]) == 2
    assert "not a multiple-choice task" in capsys.readouterr().err
