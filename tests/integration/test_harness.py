"""The benchmark harness runs a spec end to end on a tiny model, writes JSON, markdown and plots, and resumes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

HARNESS = Path(__file__).resolve().parents[2] / "benchmarks" / "harness.py"


def _harness():
    spec = importlib.util.spec_from_file_location("harness", HARNESS)
    module = importlib.util.module_from_spec(spec)
    sys.modules["harness"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _tiny_spec(folder: Path, name: str, model: Path, rest: str) -> Path:
    """A spec file on a tiny model with the tests' calibration and perplexity sizes; ``rest`` adds its keys."""
    spec = folder / f"{name}.yaml"
    header = f"name: {name}\nmodel: {model}\ncalibration: {{samples: 4, len: 32, seed: 0}}\n"
    spec.write_text(header + "perplexity: {len: 32, windows: 2}\n" + rest, encoding="utf-8")
    return spec


def test_harness_runs_a_spec_and_skips_finished_cells(tmp_path, tiny_folders, data_dir, task_data_dir, monkeypatch):
    assert data_dir == task_data_dir  # one folder: WikiText-2 and the task files
    monkeypatch.setenv("NGC_DATA_DIR", str(data_dir))
    spec = _tiny_spec(
        tmp_path,
        "tiny",
        tiny_folders["llama"],
        """tasks: {names: arc_easy, batch_size: 2}
speed: {shapes: 1x16, decode: 1x8+2, warmup: 0, repeats: 1}
ratios: [0.3, 0.5]
cells:
  svd-llm: {method: svd-llm}
  ngc: {method: ngc}
""",
    )
    out = tmp_path / "results"
    harness = _harness()
    monkeypatch.setattr(sys, "argv", ["harness.py", str(spec), "--out", str(out), "--only", "ngc@0.3"])
    harness.main()
    results = json.loads((out / "results.json").read_text())
    assert list(results["cells"]) == ["ngc@0.3"]
    cell = results["cells"]["ngc@0.3"]
    assert cell["tasks"]["arc_easy"]["n"] == 5 and cell["ppl"]["windows"] == 2
    assert cell["speed"]["prefill"][0]["limit"] == pytest.approx(1 / cell["accounting"]["mac_ratio"])
    assert abs(cell["accounting"]["ratio_removed"] - 0.3) < 0.05
    finished = dict(cell)

    monkeypatch.setattr(sys, "argv", ["harness.py", str(spec), "--out", str(out)])
    harness.main()
    results = json.loads((out / "results.json").read_text())
    assert set(results["cells"]) == {"svd-llm@0.3", "svd-llm@0.5", "ngc@0.3", "ngc@0.5"}
    assert results["cells"]["ngc@0.3"] == finished  # kept, not recomputed
    table = (out / "results.md").read_text()
    assert "| dense |" in table and "| ngc |" in table and "arc_easy" in table
    for plot in ("ppl_vs_ratio.png", "accuracy_vs_ratio.png", "speedup_vs_ratio.png"):
        assert (out / plot).stat().st_size > 0

    spec.write_text(spec.read_text().replace("windows: 2", "windows: 3"), encoding="utf-8")
    with pytest.raises(SystemExit, match="other settings"):
        harness.main()


def test_a_finished_cell_is_not_reused_when_its_label_changed_settings(tmp_path):
    harness = _harness()
    spec = harness.Spec(name="t", model="m", ratios=[0.3], cells={"ngc": {"method": "ngc", "topology": "intra"}})
    config = harness.CompressionConfig(method="ngc", topology="intra", ratio=0.3).to_dict()
    cells = {"ngc@0.3": {"label": "ngc", "ratio": 0.3, "config": config}}
    harness.refuse_changed_cells(cells, spec, tmp_path / "results.json")  # same settings: reused
    spec.cells["ngc"]["topology"] = "intra-cross-2"
    with pytest.raises(SystemExit, match="ngc@0.3 were made with other settings"):
        harness.refuse_changed_cells(cells, spec, tmp_path / "results.json")
    spec.cells["ngc"] = {"method": "ngc", "topology": "intra", "sequential": False}  # default changed explicitly
    assert config["sequential"] is not False
    with pytest.raises(SystemExit, match="other settings"):
        harness.refuse_changed_cells(cells, spec, tmp_path / "results.json")


@pytest.mark.parametrize("path", sorted(HARNESS.parent.glob("specs/*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_spec_reads_and_names_its_results_folder(path):
    spec = _harness().Spec.read(path)
    assert spec.name == path.stem and spec.cells and spec.ratios


def test_a_dense_row_is_reused_only_from_results_of_the_same_settings(tmp_path):
    harness = _harness()
    spec = harness.Spec(name="t", model="m", ratios=[0.3], cells={"ngc": {"method": "ngc"}}, dense_from="other")
    other = tmp_path / "other" / "results.json"
    with pytest.raises(SystemExit, match="does not exist"):
        harness.reused_dense(spec, other)
    other.parent.mkdir()
    dense = {"mean_acc": 0.41, "tasks": {}}
    other.write_text(json.dumps({"settings": spec.settings() | {"tasks": {"limit": 100}}, "dense": dense}))
    with pytest.raises(SystemExit, match="other settings"):
        harness.reused_dense(spec, other)
    other.write_text(json.dumps({"settings": spec.settings(), "dense": dense}))
    assert harness.reused_dense(spec, other) == dense | {"from": "other"}


def test_a_refused_cell_is_recorded_and_the_run_goes_on(tmp_path, tiny_folders, data_dir, monkeypatch):
    monkeypatch.setenv("NGC_DATA_DIR", str(data_dir))
    cells = "cells:\n  zs-svd: {method: zs-svd, roles: [q, k, v]}\n  svd-llm: {method: svd-llm, roles: [q, k, v]}\n"
    cells_text = "cells:\n  zs-svd: {method: zs-svd, roles: [q, k, v]}\n"
    spec = _tiny_spec(tmp_path, "refused", tiny_folders["llama"], "ratios: [0.9]\n" + cells)
    out = tmp_path / "results"
    harness = _harness()
    monkeypatch.setattr(sys, "argv", ["harness.py", str(spec), "--out", str(out)])
    harness.main()
    cells = json.loads((out / "results.json").read_text())["cells"]
    assert "cannot save" in cells["zs-svd@0.9"]["refused"] and "ppl" not in cells["zs-svd@0.9"]
    assert cells["svd-llm@0.9"]["ppl"]["ppl"] > 0  # the cell after the refused one still ran
    table = (out / "results.md").read_text()
    assert "| zs-svd | refused |" in table and "zs-svd@0.9: the zero-sum selection cannot save" in table

    harness.main()  # a rerun keeps the refusal instead of trying again
    assert json.loads((out / "results.json").read_text())["cells"] == cells

    only_refused = _tiny_spec(tmp_path, "only_refused", tiny_folders["llama"], "ratios: [0.9]\n" + cells_text)
    monkeypatch.setattr(sys, "argv", ["harness.py", str(only_refused), "--out", str(tmp_path / "only")])
    harness.main()
    results = json.loads((tmp_path / "only" / "results.json").read_text())
    assert "cannot save" in results["cells"]["zs-svd@0.9"]["refused"]
    assert "calibration" not in results  # refused from its plan: no statistics were collected for it
    assert "Calibration: 4 x 32 tokens of wikitext2, seed 0." in (tmp_path / "only" / "results.md").read_text()
