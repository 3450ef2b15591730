"""ShardWriter: Hugging Face's sharded layout, aliases recorded once, identical bytes for identical input."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

from ngc.checkpoint.shards import INDEX_FILE, SINGLE_FILE, ShardWriter, TensorNames, canonical_tensors


def read_all(folder):
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            out.update({name: handle.get_tensor(name) for name in handle.keys()})
    return out


def sample() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(4, 6, generator=g),
        "ids": torch.arange(7),
        "half": torch.randn(3, generator=g).to(torch.bfloat16),
        "flag": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 5),
    }


def test_single_file_holds_every_tensor_exactly_and_the_aliases(tmp_path):
    tensors = sample()
    writer = ShardWriter(tmp_path)
    writer.add(tensors, aliases={"w_tied": "w"})
    total = writer.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == [SINGLE_FILE]
    assert total == 4 * 6 * 4 + 7 * 8 + 3 * 2 + 3 * 1
    stored = read_all(tmp_path)
    assert stored.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert stored[name].dtype == tensor.dtype and torch.equal(stored[name], tensor)
    with safe_open(str(tmp_path / SINGLE_FILE), "pt") as handle:
        metadata = handle.metadata()
    assert metadata == {"format": "pt", "ngc.aliases": '{"w_tied": "w"}'}


def test_shards_split_at_the_limit_with_a_standard_index(tmp_path):
    writer = ShardWriter(tmp_path, max_shard_bytes=100)
    blocks = {f"layer.{i}.w": torch.full((10,), float(i)) for i in range(5)}  # 40 bytes each: 2 per shard
    for name, tensor in blocks.items():
        writer.add({name: tensor})
    writer.add({}, aliases={"other": "layer.4.w"})
    assert writer.finish() == 200
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)] + [INDEX_FILE]
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert index["metadata"] == {"total_size": 200, "ngc.aliases": '{"other": "layer.4.w"}'}
    assert index["weight_map"]["layer.0.w"] == index["weight_map"]["layer.1.w"] == "model-00001-of-00003.safetensors"
    assert index["weight_map"]["layer.4.w"] == "model-00003-of-00003.safetensors"
    assert "other" not in index["weight_map"]
    stored = read_all(tmp_path)
    assert all(torch.equal(stored[n], t) for n, t in blocks.items())


def test_a_shard_flushed_alone_still_becomes_model_safetensors_with_aliases(tmp_path):
    writer = ShardWriter(tmp_path, max_shard_bytes=40)
    writer.add({"a": torch.ones(10)}, aliases={"b": "a"})  # fills the shard: flushed at once
    writer.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == [SINGLE_FILE]
    with safe_open(str(tmp_path / SINGLE_FILE), "pt") as handle:
        assert json.loads(handle.metadata()["ngc.aliases"]) == {"b": "a"}


def test_dtype_casts_floating_tensors_only_and_copies(tmp_path):
    source = torch.ones(3)
    writer = ShardWriter(tmp_path, dtype=torch.float16)
    writer.add({"f": source, "i": torch.arange(3)})
    source.add_(1)  # changed after add: the file keeps the value given
    writer.finish()
    stored = read_all(tmp_path)
    assert stored["f"].dtype == torch.float16 and torch.equal(stored["f"], torch.ones(3, dtype=torch.float16))
    assert stored["i"].dtype == torch.int64


def test_same_input_gives_byte_identical_files(tmp_path):
    digests = []
    for run in range(3):
        folder = tmp_path / str(run)
        folder.mkdir()
        writer = ShardWriter(folder, max_shard_bytes=64)
        writer.add(sample(), aliases={"z": "w", "a": "ids", "m": "half"})
        writer.finish()
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()})
    assert digests[0] == digests[1] == digests[2]


@pytest.mark.parametrize(
    ("tensors", "aliases", "message"),
    [
        ({"a": torch.ones(1)}, {"b": "missing"}, "not a stored tensor"),
        ({"a": torch.ones(1)}, {"a": "a"}, "both as a tensor and as an alias"),
        ({}, {"first": "first"}, "given twice"),
        ({"first": torch.ones(1)}, None, "given twice"),
        ({"m": torch.empty(2, device="meta")}, None, "meta"),
    ],
)
def test_bad_names_are_refused(tmp_path, tensors, aliases, message):
    writer = ShardWriter(tmp_path)
    writer.add({"first": torch.zeros(1)})
    with pytest.raises(ValueError, match=message):
        writer.add(tensors, aliases)


def test_canonical_tensors_finds_shared_parameters_across_calls():
    shared = nn.Linear(3, 3)
    first, second = nn.Sequential(shared, nn.Linear(3, 2)), nn.Sequential(shared)
    names = TensorNames()
    tensors, aliases = canonical_tensors(first, "layers.0.", names)
    assert sorted(tensors) == ["layers.0.0.bias", "layers.0.0.weight", "layers.0.1.bias", "layers.0.1.weight"]
    assert aliases == {}
    tensors, aliases = canonical_tensors(second, "layers.1.", names)
    assert tensors == {}
    assert aliases == {"layers.1.0.weight": "layers.0.0.weight", "layers.1.0.bias": "layers.0.0.bias"}


def test_canonical_tensors_on_meta_aliases_only_the_same_object():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    model[1].weight = model[0].weight
    tensors, aliases = canonical_tensors(nn.Sequential(model, nn.Linear(3, 3, bias=False).to("meta")))
    assert sorted(tensors) == ["0.0.weight", "1.weight"] and aliases == {"0.1.weight": "0.0.weight"}
