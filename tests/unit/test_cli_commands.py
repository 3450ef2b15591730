"""The happy paths of the commands (their error paths live in tests/errors)."""

from __future__ import annotations

from ngc.cli import main as cli


def test_models_lists_aliases_and_families(capsys):
    assert cli.run(["models"]) == 0
    out = capsys.readouterr().out
    for fragment in ("smollm2-135m", "gemma3-270m", "Llama (llama)", "GPT-NeoX (gpt_neox)"):
        assert fragment in out


def test_version_and_help(capsys):
    from ngc import __version__

    assert cli.run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ngc {__version__}"
    assert cli.run(["--help"]) == 0
    assert "eval" in capsys.readouterr().out


def test_models_reports_a_cache_only_when_complete_and_current(capsys, tmp_path, monkeypatch):
    import json

    folder = tmp_path / "models" / "smollm2-135m"
    folder.mkdir(parents=True)
    (folder / "ngc_source.json").write_text(json.dumps({"version": "0.1.2"}))
    import ngc.cli.models_cmd as models_cmd

    monkeypatch.setattr(models_cmd, "installed_version", lambda dist: "0.1.2")

    def smollm2_row() -> str:
        assert cli.run(["models", "--cache-dir", str(tmp_path)]) == 0
        return next(line for line in capsys.readouterr().out.splitlines() if "smollm2-135m" in line)

    assert "no (converted" in smollm2_row()  # no config.json: an incomplete folder
    (folder / "config.json").write_text("{}")
    assert "yes" in smollm2_row()
    (folder / "ngc_source.json").write_text(json.dumps({"version": "0.0.9"}))
    assert "no (converted" in smollm2_row()  # made from another package version


def test_compress_writes_a_checkpoint_that_eval_loads(capsys, tmp_path, tiny_folders, text_file):
    import json

    out, report = tmp_path / "ckpt", tmp_path / "compress.json"
    args = [
        "compress",
        str(tiny_folders["llama"]),
        "--method",
        "basis-sharing",
        "--ratio",
        "0.3",
        "--calib",
        str(text_file),
        "--calib-samples",
        "4",
        "--calib-len",
        "32",
        "--out",
        str(out),
        "--json",
        str(report),
    ]
    assert cli.run(args) == 0
    shown = capsys.readouterr().out
    assert "decoder linear weights" in shown and "ratio removed R = 0.31" in shown
    payload = json.loads(report.read_text())
    assert payload["config"]["method"] == "basis-sharing"
    assert payload["calibration"] == {
        "source": str(text_file),
        "split": None,
        "n_windows": 4,
        "window_len": 32,
        "seed": 0,
        "world_size": 1,
    }
    assert payload["pipeline"]["source"] == "folder"  # a local folder is streamed layer by layer into the checkpoint
    assert {g["id"] for g in payload["groups"]} >= {"L0-1:q", "L0:o", "L1:down"}
    manifest = json.loads((out / "ngc.json").read_text())
    assert manifest["accounting"]["decoder_linear_params_kept"] == payload["accounting"]["decoder_linear_params_kept"]
    assert cli.run(["eval", str(out), "--ppl-file", str(text_file), "--ppl-len", "32", "--max-windows", "2"]) == 0
    assert "ppl" in capsys.readouterr().out


def test_compress_dry_run_shows_groups_and_ranks_without_data(capsys, tiny_folders):
    args = [
        "compress",
        str(tiny_folders["gpt2"]),
        "--method",
        "ngc",
        "--topology",
        "intra",
        "--ratio",
        "0.5",
        "--dry-run",
    ]
    assert cli.run(args) == 0
    captured = capsys.readouterr()
    assert "L0:q+k+v" in captured.out and "q, k, v" in captured.out
    assert "removed" in captured.err


def test_info_export_and_demo(capsys, tmp_path, tiny_folders, text_file, data_dir):
    import json

    import torch
    from transformers import AutoModelForCausalLM

    from ngc.checkpoint.load import load

    out = tmp_path / "ckpt"
    args = [
        "compress",
        str(tiny_folders["gpt2"]),
        "--method",
        "basis-sharing",
        "--ratio",
        "0.4",
        "--calib",
        str(text_file),
        "--calib-samples",
        "4",
        "--calib-len",
        "32",
        "--out",
        str(out),
    ]
    assert cli.run(args) == 0
    capsys.readouterr()

    assert cli.run(["info", str(out), "--groups"]) == 0
    shown = capsys.readouterr().out
    assert "basis-sharing at R = 0.4" in shown and "L0-1:q+k+v" not in shown and "L0-1:q" in shown
    assert cli.run(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["ratio"] == 0.4

    dense = tmp_path / "dense"
    assert cli.run(["export", str(out), "--dense", str(dense), "--json", str(tmp_path / "export.json")]) == 0
    exported_record = json.loads((tmp_path / "export.json").read_text())
    assert exported_record["dense_bytes"] > exported_record["checkpoint_bytes"] * 0.9
    assert "gains nothing" not in capsys.readouterr().err  # the size report, not an error
    exported = AutoModelForCausalLM.from_pretrained(dense).eval()
    ids = torch.randint(0, 250, (1, 12))
    with torch.no_grad():
        assert torch.allclose(exported(input_ids=ids).logits, load(out)(input_ids=ids).logits, atol=1e-4)

    demo = tmp_path / "demo"
    args = [
        "demo",
        "--model",
        str(tiny_folders["llama"]),
        "--data-dir",
        str(data_dir),
        "--out",
        str(demo),
        "--calib-samples",
        "2",
        "--calib-len",
        "32",
        "--max-windows",
        "2",
    ]
    assert cli.run(args) == 0
    result = json.loads((demo / "demo.json").read_text())
    assert result["config"]["method"] == "ngc" and result["compressed"]["windows"] == 2
    assert (demo / "demo.png").stat().st_size > 1000 and (demo / "checkpoint" / "ngc.json").is_file()


def test_dynamics_writes_per_layer_json_and_a_plot(capsys, tmp_path, tiny_folders, text_file):
    import json

    out = tmp_path / "dyn"
    ckpt = tmp_path / "ckpt"
    assert (
        cli.run(["compress", str(tiny_folders["llama"]), "--method", "svd", "--ratio", "0.5", "--out", str(ckpt)]) == 0
    )
    args = [
        "dynamics",
        str(ckpt),
        "--reference",
        str(tiny_folders["llama"]),
        "--data",
        str(text_file),
        "--sequences",
        "2",
        "--length",
        "24",
        "--probes",
        "2",
        "--lanczos",
        "4",
        "--out",
        str(out),
    ]
    assert cli.run(args) == 0
    payload = json.loads((out / "dynamics.json").read_text())
    keys = {"layer", "lyapunov", "lyapunov_se", "divergence", "sym_top", "driving_ratio", "force_ratio", "departure"}
    assert [row["layer"] for row in payload["layers"]] == [0, 1] and keys <= set(payload["layers"][0])
    assert payload["layers"][1]["force_ratio"] > 0 and (out / "dynamics.png").stat().st_size > 1000


def test_plain_svd_with_refinement_loads_the_calibration_it_needs(tiny_folders, text_file, tmp_path):
    """Local refinement needs the calibration moments even for a method that does not weight its SVD by them."""
    import json

    for refine in ("local", "distill"):
        out, report = tmp_path / f"svd-{refine}", tmp_path / f"svd-{refine}.json"
        args = ["compress", str(tiny_folders["llama"]), "--method", "svd", "--ratio", "0.3", "--refine", refine]
        args += ["--refine-steps", "3", "--calib", str(text_file), "--calib-samples", "4", "--calib-len", "32"]
        assert cli.run([*args, "--out", str(out), "--json", str(report)]) == 0
        payload = json.loads(report.read_text())
        assert payload["calibration"]["n_windows"] == 4
        if refine == "local":
            assert all(after <= before for before, after in payload["local"].values())
        else:
            assert payload["distill"]["steps"] == 3
