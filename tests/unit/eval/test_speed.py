"""Speed and memory: shapes parse, both models are timed, limits come from the accounting, the CLI reports."""

from __future__ import annotations

import json

import pytest
import torch

from ngc.accounting import account
from ngc.api import compress
from ngc.cli import main as cli
from ngc.config import CompressionConfig
from ngc.data.windows import CalibrationWindows
from ngc.errors import UsageError
from ngc.eval import speed
from ngc.eval.speed import DecodeShape, Shape, benchmark, decode_once, parse_decode, parse_shapes
from ngc.models.tiny import build_tiny_model, save_tiny_model, tiny_families
from ngc.modules.factorized import GroupBasis


def test_shapes_parse_and_bad_ones_are_named():
    assert parse_shapes("1x16, 4X32") == [Shape(1, 16), Shape(4, 32)]
    assert parse_decode("2x8+4") == DecodeShape(2, 8, 4)
    for bad in ("4by32", "0x16", ""):
        with pytest.raises(UsageError, match="shape"):
            parse_shapes(bad)
    with pytest.raises(UsageError, match="bad decode shape '1x8'"):
        parse_decode("1x8")


def test_benchmark_times_both_models_against_the_accounting_limits():
    dense = build_tiny_model("llama")
    model = build_tiny_model("llama")
    calib = CalibrationWindows(torch.randint(0, 250, (4, 32), generator=torch.Generator().manual_seed(0)), "r", None, 0)
    compress(model, CompressionConfig(method="svd-llm", ratio=0.5), calib)
    result = benchmark(model, dense, [Shape(1, 16), Shape(2, 16)], DecodeShape(1, 8, 4), warmup=0, repeats=2)
    mine, theirs = account(model), account(dense)
    assert result.mac_ratio == pytest.approx(mine.macs_per_token / theirs.macs_per_token) and result.mac_ratio < 1
    assert [(row.batch, row.len) for row in result.prefill] == [(1, 16), (2, 16)]
    for row in [*result.prefill, result.decode]:
        assert row.tokens_per_s > 0 and row.reference_tokens_per_s > 0
        assert row.speedup == pytest.approx(row.tokens_per_s / row.reference_tokens_per_s)
    assert result.prefill[0].limit == pytest.approx(1 / result.mac_ratio)
    assert result.decode.limit == pytest.approx(theirs.stored_bytes / mine.stored_bytes)


def test_decode_runs_the_requested_greedy_steps_with_the_cache():
    model = build_tiny_model("llama")
    calls = []
    model.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    decode_once(model, torch.zeros(2, 8, dtype=torch.long), new_tokens=3)
    assert calls == [torch.Size([2, 8])] + [torch.Size([2, 1])] * 3


def test_bench_command_compares_a_checkpoint_with_its_base(capsys, tmp_path, tiny_folders, text_file):
    ckpt, out = tmp_path / "ckpt", tmp_path / "bench.json"
    base = str(tiny_folders["llama"])
    args = ["compress", base, "--method", "ngc", "--ratio", "0.5", "--calib", str(text_file)]
    assert cli.run([*args, "--calib-samples", "4", "--calib-len", "32", "--out", str(ckpt)]) == 0
    capsys.readouterr()
    args = ["bench", str(ckpt), "--shapes", "1x16,2x16", "--decode", "1x8+4", "--warmup", "0", "--repeats", "1"]
    assert cli.run([*args, "--threads", "1", "--json", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "prefill" in shown and "decode" in shown and "speed-up" in shown
    payload = json.loads(out.read_text())
    assert payload["reference"] == base and payload["threads"] == 1
    assert [(r["batch"], r["len"]) for r in payload["prefill"]] == [(1, 16), (2, 16)]
    for row in [*payload["prefill"], payload["decode"]]:
        assert set(row) >= {"batch", "len", "tokens_per_s", "reference_tokens_per_s", "speedup", "limit"}
    peak = payload["peak_memory_bytes"]
    assert peak["model"] >= peak["baseline"] > 0 and peak["reference"] >= peak["baseline"]
    assert cli.run(["bench", base]) == 2  # a plain model has no base model to compare with
    assert "--reference" in capsys.readouterr().err


@pytest.mark.parametrize("family", tiny_families())
def test_decode_works_for_every_family(family):
    assert decode_once(build_tiny_model(family), torch.zeros(1, 4, dtype=torch.long), new_tokens=2) > 0


def _compressed_pair(ratio: float = 0.5) -> tuple[torch.nn.Module, torch.nn.Module]:
    dense, model = build_tiny_model("llama"), build_tiny_model("llama")
    calib = CalibrationWindows(torch.randint(0, 250, (4, 32), generator=torch.Generator().manual_seed(0)), "r", None, 0)
    compress(model, CompressionConfig(method="ngc", ratio=ratio, sequential=False), calib)
    return model, dense


def test_static_decode_gives_the_greedy_tokens_of_the_dynamic_cache():
    model, _ = _compressed_pair()
    tokens: dict[str, list[torch.Tensor]] = {"dynamic": [], "static": []}

    def recorder(kind):
        return lambda module, args, kwargs, out: tokens[kind].append(out.logits[:, -1].argmax(-1))

    ids = torch.randint(0, 250, (2, 8), generator=torch.Generator().manual_seed(2))
    handle = model.register_forward_hook(recorder("dynamic"), with_kwargs=True)
    decode_once(model, ids, new_tokens=4)
    handle.remove()
    handle = model.register_forward_hook(recorder("static"), with_kwargs=True)
    speed.static_decode_once(model, model, ids, new_tokens=4)
    handle.remove()
    assert len(tokens["static"]) == 5  # the prefill and 4 steps
    assert all(torch.equal(a, b) for a, b in zip(tokens["dynamic"], tokens["static"], strict=True))


def _aot_eager(model):
    return torch.compile(model, fullgraph=True, dynamic=False, backend="aot_eager")


def test_compiled_benchmark_reports_compile_time_apart(monkeypatch):
    monkeypatch.setattr(speed, "compile_model", _aot_eager)  # graph capture without inductor's C++ build
    model, dense = _compressed_pair()
    torch._dynamo.reset()
    result = benchmark(model, dense, [Shape(1, 16)], DecodeShape(1, 8, 3), warmup=0, repeats=1, compile=True)
    assert result.compiled and result.mode == "compiled" and result.compile_error is None
    assert set(result.compile_seconds) == {"model", "reference"} and min(result.compile_seconds.values()) > 0
    assert result.prefill[0].tokens_per_s > 0 and result.decode.tokens_per_s > 0
    eager = benchmark(model, dense, [Shape(1, 16)], None, warmup=0, repeats=1)
    assert not eager.compiled and eager.compile_seconds == {} and eager.mode == "eager"


def test_a_failing_compiler_falls_back_to_eager_with_one_warning(monkeypatch):
    def broken(model):
        def forward(**kwargs):
            raise RuntimeError("no working C++ compiler\nsecond line")

        return forward

    monkeypatch.setattr(speed, "compile_model", broken)
    model, dense = _compressed_pair()
    with pytest.warns(RuntimeWarning) as caught:
        result = benchmark(model, dense, [Shape(1, 8)], DecodeShape(1, 4, 2), warmup=0, repeats=1, compile=True)
    assert len(caught) == 1 and "RuntimeError: no working C++ compiler" in str(caught[0].message)
    assert not result.compiled and result.compile_error == "RuntimeError: no working C++ compiler"
    assert result.prefill[0].tokens_per_s > 0 and result.decode.tokens_per_s > 0


@pytest.mark.slow
def test_inductor_benchmark_compiles_both_models():
    model, dense = _compressed_pair()
    torch._dynamo.reset()
    result = benchmark(model, dense, [Shape(1, 16)], DecodeShape(1, 8, 3), warmup=0, repeats=1, compile=True)
    assert result.compiled and result.compile_error is None and result.decode.tokens_per_s > 0


def test_rank_alignment_is_the_power_of_two_dividing_every_rank():
    model, dense = _compressed_pair()
    assert speed.rank_alignment(dense) is None
    ranks = {b.rank for b in model.modules() if isinstance(b, GroupBasis)}
    alignment = speed.rank_alignment(model)
    assert all(r % alignment == 0 for r in ranks) and any(r % (2 * alignment) for r in ranks)


def test_cuda_peak_counts_only_the_measured_model(monkeypatch):
    """Allocation figures of a device where another model's 10 MB are resident: they are not counted."""
    model = build_tiny_model("llama")
    state = {"allocated": 10_000_000 + speed.resident_bytes(model)}
    for name in ("synchronize", "empty_cache", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: state["allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: state["allocated"] + 4096)
    monkeypatch.setattr(speed, "prefill_once", lambda *a: 0.0)
    assert speed.cuda_peak_bytes(model, Shape(1, 8)) == speed.resident_bytes(model) + 4096


def test_bench_finds_the_base_by_its_record_and_hash_not_the_current_folder(capsys, tmp_path, monkeypatch, text_file):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    save_tiny_model("llama", work / "base")
    monkeypatch.chdir(work)
    args = ["compress", "base", "--method", "ngc", "--ratio", "0.5", "--calib", str(text_file)]
    assert cli.run([*args, "--calib-samples", "4", "--calib-len", "32", "--out", "ckpt"]) == 0
    monkeypatch.chdir(elsewhere)
    save_tiny_model("llama", elsewhere / "base", seed=1)  # same relative name here, other weights: never used
    out = tmp_path / "bench.json"
    bench = ["bench", str(work / "ckpt"), "--shapes", "1x8", "--no-decode", "--repeats", "1", "--no-memory"]
    capsys.readouterr()
    assert cli.run([*bench, "--warmup", "0", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["reference_identity"] == "matches" and payload["reference"] == str(work / "base")
    assert payload["mode"] == "eager" and payload["compile_seconds"] is None
    assert cli.run([*bench, "--reference", "base"]) == 0  # given explicitly: measured, with a warning
    assert "is not the base model recorded" in capsys.readouterr().err
    save_tiny_model("llama", work / "base", seed=2)  # the base folder now holds other weights
    assert cli.run(bench) == 2
    err = capsys.readouterr().err
    assert "was not found" in err and "(other weights)" in err and "--reference" in err


def test_bench_compile_flag_reports_the_mode_and_compile_time(capsys, tmp_path, monkeypatch, tiny_folders, text_file):
    monkeypatch.setattr(speed, "compile_model", _aot_eager)
    ckpt, out = tmp_path / "ckpt", tmp_path / "bench.json"
    args = ["compress", str(tiny_folders["llama"]), "--method", "ngc", "--ratio", "0.5", "--calib", str(text_file)]
    assert cli.run([*args, "--calib-samples", "4", "--calib-len", "32", "--out", str(ckpt)]) == 0
    capsys.readouterr()
    bench = ["bench", str(ckpt), "--shapes", "1x8", "--decode", "1x4+2", "--repeats", "1", "--warmup", "0"]
    assert cli.run([*bench, "--no-memory", "--compile", "--json", str(out)]) == 0
    captured = capsys.readouterr()
    assert "compiled" in captured.out and "compile (first calls" in captured.err and "ranks: every rank" in captured.err
    payload = json.loads(out.read_text())
    assert payload["mode"] == "compiled" and set(payload["compile_seconds"]) == {"model", "reference"}
    assert payload["compile_error"] is None and isinstance(payload["rank_alignment"], int)
