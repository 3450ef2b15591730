"""The refinement benchmarks run end to end on a tiny model (their figures are measurements, never asserted)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_refine_curve_writes_every_cell_resumes_and_plots(tmp_path, tiny_folders, text_file):
    curve = load_script("refine_curve")
    out, plot = tmp_path / "curve.json", tmp_path / "curve.png"
    common = ["--model", str(tiny_folders["llama"]), "--calib", str(text_file), "--ppl-data", str(text_file)]
    common += ["--calib-samples", "2", "--calib-len", "32", "--ppl-len", "32", "--ppl-windows", "2"]
    common += ["--methods", "svd-llm,ngc", "--ratios", "0.4", "--out", str(out)]
    curve.run(curve.parse_args([*common, "--budgets", "0,96"]))
    rows = json.loads(out.read_text())["rows"]
    assert [(r["method"], r["budget"]) for r in rows] == [("svd-llm", 0), ("svd-llm", 96), ("ngc", 0), ("ngc", 96)]
    refined = rows[1]["distill"]
    assert refined["steps"] == 96 // 32 and refined["data"]["source"] == str(text_file)
    first = json.loads(out.read_text())
    first["dense"]["ppl"] = -1.0  # a resumed run with the same protocol keeps the dense record it finds
    out.write_text(json.dumps(first))
    curve.run(curve.parse_args([*common, "--budgets", "0,96,160", "--resume", "--plot", str(plot)]))
    resumed = json.loads(out.read_text())
    rows = resumed["rows"]
    assert len(rows) == 6 and rows[-1]["budget"] == 160 and rows[-1]["distill"]["steps"] == 5
    assert resumed["dense"]["ppl"] == -1.0
    assert plot.stat().st_size > 0
    windows = common.index("--ppl-windows") + 1
    common[windows] = "1"
    with pytest.raises(SystemExit, match="--ppl-windows 2"):  # rows of another protocol are not mixed in
        curve.run(curve.parse_args([*common, "--budgets", "0", "--resume"]))


def test_refine_curve_cell_labels_set_any_option_with_its_type():
    curve = load_script("refine_curve")
    fields = curve.cell_fields("ngc~intra+block:loss#sequential-shrink=1;no-sequential;rank-multiple=8")
    assert fields == {
        "method": "ngc",
        "topology": "intra",
        "refine": "block",
        "alloc": "loss",
        "sequential_shrink": 1.0,
        "sequential": False,
        "rank_multiple": 8,
    }
    assert curve.closed_form_config("ngc+block:loss#sequential-shrink=1", 0.2).sequential_shrink == 1.0
    with pytest.raises(SystemExit, match="unknown option 'shrink'"):
        curve.cell_fields("ngc#shrink=1")


def test_refine_curve_merges_runs_of_one_protocol_and_refuses_others(tmp_path, tiny_folders, text_file):
    curve = load_script("refine_curve")
    common = ["--model", str(tiny_folders["llama"]), "--calib", str(text_file), "--ppl-data", str(text_file)]
    common += ["--calib-samples", "2", "--calib-len", "32", "--ppl-len", "32", "--ppl-windows", "2", "--ratios", "0.4"]
    a, b, merged = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "all.json"
    curve.run(curve.parse_args([*common, "--methods", "svd-llm", "--budgets", "0", "--out", str(a)]))
    curve.run(curve.parse_args([*common, "--methods", "svd-llm,svd", "--budgets", "0", "--out", str(b)]))
    curve.merge([a, b], merged, None)
    rows = json.loads(merged.read_text())["rows"]
    assert [(r["method"], r["budget"]) for r in rows] == [("svd-llm", 0), ("svd", 0)]  # each cell once
    other = tmp_path / "other.json"
    curve.run(curve.parse_args([*common, "--methods", "svd", "--budgets", "0", "--seed", "1", "--out", str(other)]))
    with pytest.raises(SystemExit, match="differs"):
        curve.merge([other], merged, None)


def test_distill_step_reports_the_ratio_to_a_dense_forward(tmp_path):
    bench = load_script("distill_step")
    out = tmp_path / "step.json"
    bench.main(["--model", "tests-tiny", "--window", "32", "--steps", "1", "--forward-repeats", "1", "--out", str(out)])
    payload = json.loads(out.read_text())
    assert set(payload["steps"]) == set(bench.VARIANTS) and payload["threads"]["torch"] == 1
    assert all(row["dense_forwards"] > 0 for row in payload["steps"].values())


def test_merged_records_agree_to_rounding_but_not_beyond():
    curve = load_script("refine_curve")
    dense = {"ppl": 20.713510192555315, "tokens": 32752, "windows": 16}
    assert curve.same_record(dense, {**dense, "ppl": 20.713326762521234})  # two processes, 6th digit
    assert not curve.same_record(dense, {**dense, "ppl": 20.8})
    assert not curve.same_record(dense, {**dense, "tokens": 32751})
    assert not curve.same_record(dense, {"ppl": dense["ppl"], "tokens": 32752})
