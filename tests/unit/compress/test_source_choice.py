"""ngc's defaults (loss allocation, block refinement) and what they become where they cannot run."""

from __future__ import annotations

import pytest
import torch

from ngc.cli import compress_source
from ngc.cli.compress_source import adapt_defaults, stream_folder, whole_model_bytes
from ngc.config import CompressionConfig
from ngc.errors import UsageError

NOTHING_SET: frozenset[str] = frozenset()


def test_ngc_defaults_are_the_best_measured_combination():
    config = CompressionConfig(method="ngc")
    assert (config.alloc, config.refine, config.sequential, config.sequential_shrink) == ("loss", "block", True, 1.0)
    assert config.steps == 25


def test_from_half_the_weights_removed_ngc_floors_the_loss_rule_at_half_the_uniform_rank():
    low = CompressionConfig(method="ngc", ratio=0.49)
    assert (low.alloc, low.alloc_floor, low.sequential_shrink) == ("loss", 0.0, 1.0)
    high = CompressionConfig(method="ngc", ratio=0.5)
    assert (high.alloc, high.alloc_floor, high.refine, high.sequential, high.sequential_shrink) == (
        "loss",
        0.5,
        "block",
        True,
        0.1,
    )
    assert CompressionConfig(method="ngc", ratio=0.6, sequential_shrink=1.0).sequential_shrink == 1.0
    assert CompressionConfig(method="ngc", ratio=0.6, alloc_floor=0.0).alloc_floor == 0.0  # a set option is kept
    assert CompressionConfig(method="ngc", ratio=0.6, alloc="uniform").alloc == "uniform"
    assert CompressionConfig(method="zs-svd", ratio=0.6).alloc == "zero-sum"  # the peers keep their recipes


def test_streamed_defaults_replace_only_what_the_user_did_not_set():
    config = CompressionConfig(method="ngc", ratio=0.4)
    streamed, notes = adapt_defaults(config, NOTHING_SET, streamed=True)
    assert (streamed.alloc, streamed.refine, streamed.ratio, streamed.sequential_shrink) == (
        "uniform",
        "block",
        0.4,
        0.1,
    )
    assert len(notes) == 2 and "loss -> uniform" in notes[0] and "--alloc" in notes[0]
    assert "1.0 -> 0.1" in notes[1] and "--sequential-shrink" in notes[1]
    kept, notes = adapt_defaults(config, frozenset({"alloc", "sequential_shrink"}), streamed=True)
    assert kept == config and notes == []


def test_several_processes_drop_the_default_block_refinement_only():
    config = CompressionConfig(method="ngc")
    split, notes = adapt_defaults(config, NOTHING_SET, processes=2)
    assert (split.refine, split.alloc) == ("none", "loss") and "block -> none" in notes[0]
    assert adapt_defaults(config, frozenset({"refine"}), processes=2) == (config, [])
    assert adapt_defaults(config, NOTHING_SET, processes=1) == (config, [])


@pytest.mark.parametrize("method", ["svd-llm", "aa-svd", "zs-svd"])
def test_peers_keep_their_recipes(method):
    config = CompressionConfig(method=method)
    assert adapt_defaults(config, NOTHING_SET, streamed=True, processes=2) == (config, [])


def test_a_model_that_fits_is_loaded_whole_for_the_loss_allocation(tiny_folders):
    folder, config, notes = _choose(tiny_folders["llama"], None)
    assert folder is None and config.alloc == "loss" and notes == []


def test_a_model_too_large_for_memory_is_streamed_with_uniform_ranks(tiny_folders, monkeypatch):
    monkeypatch.setattr(compress_source, "free_memory", lambda device: 1024)
    folder, config, notes = _choose(tiny_folders["llama"], None)
    assert folder == tiny_folders["llama"] and config.alloc == "uniform" and config.refine == "block"
    assert "would not fit in memory" in notes[0] and "loss -> uniform" in notes[1] and "1.0 -> 0.1" in notes[2]


def test_stream_flag_streams_with_the_streamed_defaults(tiny_folders):
    folder, config, notes = _choose(tiny_folders["llama"], True)
    assert folder == tiny_folders["llama"] and (config.alloc, config.sequential_shrink) == ("uniform", 0.1)
    assert len(notes) == 2


def test_stream_flag_with_a_set_gradient_allocation_is_refused(tiny_folders):
    with pytest.raises(UsageError, match="--stream cannot be used here: loss allocation") as info:
        _choose(tiny_folders["llama"], True, frozenset({"alloc"}))
    assert "drop --stream" in (info.value.hint or "")


def test_no_stream_loads_whole_without_changes(tiny_folders, monkeypatch):
    monkeypatch.setattr(compress_source, "free_memory", lambda device: 0)
    assert _choose(tiny_folders["llama"], False) == (None, CompressionConfig(method="ngc"), [])


def test_whole_model_bytes_counts_every_parameter_in_the_dtype(tiny_folders):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_folders["llama"])
    expected = sum(p.numel() for p in model.parameters())
    assert whole_model_bytes(tiny_folders["llama"], torch.float32) == 4 * expected
    assert whole_model_bytes(tiny_folders["llama"], torch.bfloat16) == 2 * expected


def _choose(folder, stream, given=NOTHING_SET):
    config = CompressionConfig(method="ngc")
    return stream_folder(str(folder), config, given, stream, dtype=torch.float32, device="cpu", cache=None)


def test_a_set_ridge_is_kept_when_the_streamed_ranks_replace_the_loss_rule():
    config = CompressionConfig(method="ngc", ratio=0.3, sequential_shrink=3.0)
    streamed, notes = adapt_defaults(config, frozenset({"sequential_shrink"}), streamed=True)
    assert (streamed.alloc, streamed.sequential_shrink) == ("uniform", 3.0)
    assert len(notes) == 1 and "--alloc" in notes[0]
