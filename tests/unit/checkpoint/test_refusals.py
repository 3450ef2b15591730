"""Damaged or mismatched checkpoint folders are refused with a CheckpointError / UsageError naming the problem."""

from __future__ import annotations

import pytest
import torch

import ngc
from ngc.checkpoint.load import load
from ngc.checkpoint.manifest import CheckpointError, groups_from_records
from ngc.errors import UsageError
from ngc.models.tiny import build_tiny_model, build_tiny_tokenizer

from .folders import compressed, edit_json, logits, make_format_1


@pytest.fixture(scope="module")
def model():
    return compressed()


@pytest.fixture
def single(model, tmp_path):
    return ngc.save(model, tmp_path / "ckpt", tokenizer=build_tiny_tokenizer())


@pytest.fixture
def sharded(model, tmp_path):
    return ngc.save(model, tmp_path / "sharded", max_shard_bytes=20_000)


def test_version_1_folder_still_loads(model, single):
    """Format 1: one model.safetensors without a guard, no quantization_config, ngc.json format_version 1."""
    assert torch.equal(logits(load(make_format_1(single))), logits(model))


def test_a_folder_without_ngc_json_or_quantization_config_is_refused(single):
    (single / "ngc.json").unlink()
    edit_json(single / "config.json", lambda c: c.pop("quantization_config"))
    with pytest.raises(CheckpointError, match="not an ngc checkpoint"):
        load(single)


def test_a_folder_without_ngc_json_loads_from_its_quantization_config(model, single):
    (single / "ngc.json").unlink()
    assert torch.equal(logits(load(single)), logits(model))


def test_a_missing_shard_is_refused(sharded):
    next(iter(sorted(sharded.glob("model-*.safetensors")))).unlink()
    with pytest.raises(CheckpointError, match="names 1 file.s. that are not in"):
        load(sharded)


def test_a_truncated_shard_is_refused(sharded):
    shard = sorted(sharded.glob("model-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load(sharded)


def test_a_missing_or_damaged_index_is_refused(sharded):
    index = sharded / "model.safetensors.index.json"
    index.write_text(index.read_text()[:40])
    with pytest.raises(CheckpointError, match="index.json cannot be read as JSON"):
        load(sharded)
    index.unlink()
    with pytest.raises(CheckpointError, match="holds neither model.safetensors nor"):
        load(sharded)


def test_an_index_that_disagrees_with_its_files_is_refused(sharded):
    index = sharded / "model.safetensors.index.json"

    def move(payload):
        name = next(iter(payload["weight_map"]))
        other = sorted(set(payload["weight_map"].values()))[-1]
        payload["weight_map"][name] = other if payload["weight_map"][name] != other else "model-00001-of-00009.x"

    edit_json(index, move)
    with pytest.raises(CheckpointError, match="does not list what its files hold|not a .safetensors file"):
        load(sharded)


def test_config_widths_that_disagree_with_the_tensors_are_refused(single):
    (single / "ngc.json").unlink()  # no manifest signature: the stored shapes must catch it
    edit_json(single / "config.json", lambda c: c.update(intermediate_size=96))
    with pytest.raises(CheckpointError, match="config.json gives model.layers.0.mlp.down_proj the shape 64 x 96"):
        load(single)


def test_manifest_and_quantization_config_disagreeing_is_refused(single):
    edit_json(single / "config.json", lambda c: c["quantization_config"]["groups"][0].update(rank=1))
    with pytest.raises(CheckpointError, match="describe different groups"):
        load(single)


GOOD = [{"rank": 2, "members": [{"module": "a.q", "role": "q", "layer": 0, "m": 4, "n": 4, "input_key": "k"}]}]


@pytest.mark.parametrize(
    ("records", "problem"),
    [
        ([], "not a non-empty list"),
        ({"rank": 2}, "not a non-empty list"),
        ([{"rank": 2}], "no list of members"),
        ([{"rank": "2", "members": GOOD[0]["members"]}], "rank '2'"),
        ([{"rank": 0, "members": GOOD[0]["members"]}], "rank 0"),
        ([{"rank": 9, "members": GOOD[0]["members"]}], "above its input width"),
        ([{"rank": 2, "members": [{"module": "a.q", "role": "q"}]}], "layer None"),
        ([{"rank": 2, "members": [GOOD[0]["members"][0] | {"m": "4"}]}], "m '4'"),
        ([{"rank": 2, "members": [3]}], "not an object"),
        (GOOD + GOOD, "repeats group"),
    ],
)
def test_damaged_group_records_are_checkpoint_errors(records, problem):
    with pytest.raises(CheckpointError, match="group records in ngc.json are damaged") as info:
        groups_from_records(records)
    assert problem in str(info.value)


def test_damaged_groups_in_a_folder_are_refused(single):
    edit_json(single / "ngc.json", lambda m: m["groups"][0]["members"][0].pop("role"))
    with pytest.raises(CheckpointError, match="damaged"):
        load(single)


def test_a_device_map_that_cannot_hold_the_model_is_refused(single):
    with pytest.raises(UsageError, match="does not fit") as info:
        load(single, device_map="auto", max_memory={"cpu": 1000})
    assert "max_memory" in info.value.hint
    with pytest.raises(UsageError, match="places no device"):
        load(single, device_map={"model.embed_tokens": "cpu"})
    with pytest.raises(UsageError, match="not a strategy"):
        load(single, device_map="everywhere")


def test_save_refuses_a_model_without_a_compression_record(tmp_path):
    with pytest.raises(UsageError, match="no compression record"):
        ngc.save(build_tiny_model("llama"), tmp_path / "x")


def test_load_model_of_a_checkpoint_folder_is_the_compressed_model(model, single):
    from ngc.models.load import load_model

    loaded = load_model(str(single))
    assert torch.equal(logits(loaded.model), logits(model))


def test_load_model_refuses_factorised_tensors_without_their_records(single):
    from ngc.models.load import load_model

    (single / "ngc.json").unlink()
    edit_json(single / "config.json", lambda c: c.pop("quantization_config"))
    with pytest.raises(CheckpointError, match="holds factorised tensors") as info:
        load_model(str(single))
    assert "ngc.json" in info.value.hint
