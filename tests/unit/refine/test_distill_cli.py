"""``ngc compress --refine distill``: the refinement flags, and a closed-form checkpoint that an interrupted
refinement does not lose."""

from __future__ import annotations

import json

from ngc.cli import main as cli

WINDOW = 32


def compress_args(model, text_file, out, *extra: str) -> list[str]:
    return [
        "compress",
        str(model),
        "--method",
        "svd-llm",
        "--ratio",
        "0.4",
        "--calib",
        str(text_file),
        "--calib-samples",
        "2",
        "--calib-len",
        str(WINDOW),
        "--refine",
        "distill",
        "--out",
        str(out),
        *extra,
    ]


def test_a_token_budget_on_refinement_data(capsys, tmp_path, tiny_folders, text_file):
    out, report = tmp_path / "ckpt", tmp_path / "report.json"
    extra = ["--refine-data", str(text_file), "--refine-tokens", str(5 * WINDOW), "--refine-heldout", str(WINDOW)]
    assert cli.run(compress_args(tiny_folders["llama"], text_file, out, *extra, "--json", str(report))) == 0
    distilled = json.loads(report.read_text())["distill"]
    assert distilled["status"] in ("done", "stopped-early") and distilled["steps"] == 5
    assert distilled["data"]["source"] == str(text_file) and distilled["data"]["heldout_windows"] == 1
    assert distilled["data"]["train_windows"] == distilled["data"]["tokens"] // WINDOW - 1  # all of it, not 2 windows
    assert json.loads((out / "ngc.json").read_text())["distill"]["steps"] == 5
    assert "wrote the closed-form checkpoint" in capsys.readouterr().err


def test_an_interrupted_refinement_keeps_the_closed_form_checkpoint(
    capsys, tmp_path, tiny_folders, text_file, monkeypatch
):
    import ngc.refine.stage as stage

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stage, "distill", interrupted)
    out = tmp_path / "ckpt"
    code = cli.run(compress_args(tiny_folders["llama"], text_file, out, "--refine-heldout", "0"))
    assert code == 130
    manifest = json.loads((out / "ngc.json").read_text())
    assert manifest["distill"]["status"] == "pending"
    data = manifest["distill"]["data"]  # the default: the calibration text, all of it (not its 2 windows)
    assert data["source"] == str(text_file) and data["train_windows"] + data["heldout_windows"] > 2
    capsys.readouterr()
    ppl = ["eval", str(out), "--ppl-file", str(text_file), "--ppl-len", str(WINDOW), "--max-windows", "2"]
    assert cli.run(ppl) == 0 and "ppl" in capsys.readouterr().out


def test_a_budget_smaller_than_one_step_is_a_usage_error(capsys, tmp_path, tiny_folders, text_file):
    code = cli.run(compress_args(tiny_folders["llama"], text_file, tmp_path / "x", "--refine-tokens", str(WINDOW - 1)))
    err = capsys.readouterr().err
    assert code == 2 and "smaller than one step" in err and "Traceback" not in err
    assert not (tmp_path / "x" / "ngc.json").exists()


def test_missing_refinement_data_is_refused_before_loading(capsys, tmp_path, tiny_folders, text_file):
    missing = tmp_path / "nowhere.txt"
    code = cli.run(compress_args(tiny_folders["llama"], text_file, tmp_path / "x", "--refine-data", str(missing)))
    err = capsys.readouterr().err
    assert code != 0 and str(missing) in err and "loaded" not in err


def test_block_then_distill_on_the_command_line(tmp_path, tiny_folders, text_file):
    out, report = tmp_path / "ckpt", tmp_path / "report.json"
    extra = ["--refine-tokens", str(3 * WINDOW), "--json", str(report)]
    args = compress_args(tiny_folders["llama"], text_file, out, *extra)
    args[args.index("distill")] = "block+distill"
    assert cli.run(args) == 0
    record = json.loads(report.read_text())
    assert record["config"]["refine"] == "block+distill" and record["distill"]["steps"] == 3
    assert sorted(record["block"]) == ["L0", "L1"]
    assert json.loads((out / "ngc.json").read_text())["distill"]["steps"] == 3


def test_a_chain_in_the_wrong_order_is_a_usage_error(capsys, tmp_path, tiny_folders, text_file):
    args = compress_args(tiny_folders["llama"], text_file, tmp_path / "ckpt")
    args[args.index("distill")] = "distill+block"
    assert cli.run(args) == 2
    err = capsys.readouterr().err
    assert "unknown refinement 'distill+block'" in err and "block+distill" in err and "Traceback" not in err
    assert not (tmp_path / "ckpt").exists()
