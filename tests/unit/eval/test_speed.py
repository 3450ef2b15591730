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
from ngc.eval.speed import DecodeShape, Shape, benchmark, decode_once, parse_decode, parse_shapes
from ngc.models.tiny import build_tiny_model, tiny_families


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
