"""The three newer baselines from the command line: compress a tiny folder, save, reload, evaluate."""

from __future__ import annotations

import json

import pytest

from ngc.cli import main as cli


@pytest.mark.parametrize(
    ("method", "source"),
    [("aa-svd", "folder"), ("svd-llm-v2", "memory"), ("zs-svd", "memory")],  # the last two need the whole model
)
def test_baseline_checkpoint_saves_reloads_and_evaluates(capsys, tmp_path, tiny_folders, text_file, method, source):
    out, report = tmp_path / "ckpt", tmp_path / "compress.json"
    args = ["compress", str(tiny_folders["llama"]), "--method", method, "--ratio", "0.3", "--calib", str(text_file)]
    args += ["--calib-samples", "4", "--calib-len", "32", "--out", str(out), "--json", str(report)]
    assert cli.run(args) == 0
    payload = json.loads(report.read_text())
    assert payload["pipeline"]["source"] == source
    assert payload["accounting"]["ratio_removed"] >= 0.3 - 1e-9
    if method == "aa-svd":
        assert payload["config"]["refine"] == "block" and sorted(payload["block"]) == ["L0", "L1"]
    else:
        assert payload["allocation"]["rule"] == {"svd-llm-v2": "v2", "zs-svd": "zero-sum"}[method]
    if method == "svd-llm-v2":
        assert all(g["factorisation"] == "eigh" for g in payload["groups"])
    manifest = json.loads((out / "ngc.json").read_text())
    assert manifest["accounting"]["dense_modules"] == payload["accounting"]["dense_modules"]
    capsys.readouterr()
    assert cli.run(["eval", str(out), "--ppl-file", str(text_file), "--ppl-len", "32", "--max-windows", "2"]) == 0
    assert "ppl" in capsys.readouterr().out


def test_block_refinement_of_a_method_without_fitted_factors_is_refused(capsys, tiny_folders, tmp_path, text_file):
    args = ["compress", str(tiny_folders["llama"]), "--method", "asvd", "--refine", "block", "--calib", str(text_file)]
    args += ["--calib-samples", "2", "--calib-len", "32", "--out", str(tmp_path / "x")]
    assert cli.run(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--refine block needs a whitening method" in err and "aa-svd" in err
