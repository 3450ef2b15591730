"""benchmarks/random_model.py writes a loadable, correctly indexed and sharded random Llama folder."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from ngc.models.tiny import build_tiny_tokenizer

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "random_model.py"
SHARD_BYTES = 40_000  # several shards for a 64-wide model


@pytest.fixture(scope="module")
def random_model():
    spec = importlib.util.spec_from_file_location("random_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["random_model"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_shape(random_model):
    return random_model.resolve_shape("llama2-70b", layers=2, hidden=64, intermediate=128, heads=4, kv_heads=2)


@pytest.fixture
def written(random_model, tiny_shape, tmp_path):
    tokenizer = build_tiny_tokenizer()
    return random_model.write_model(tmp_path / "model", tiny_shape, tokenizer, seed=0, max_shard_bytes=SHARD_BYTES)


def test_folder_loads_with_transformers(written, tiny_shape):
    model = AutoModelForCausalLM.from_pretrained(written, dtype=torch.float32)
    config = model.config
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (64, 128, 2)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert config.vocab_size == len(build_tiny_tokenizer())
    weight = model.model.layers[1].mlp.down_proj.weight
    assert abs(weight.std().item() - 0.02) < 0.002
    assert torch.equal(model.model.norm.weight, torch.ones(64))
    logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    assert torch.isfinite(logits).all()


def test_index_lists_every_tensor_and_shards_respect_the_limit(written, random_model, tiny_shape):
    index = json.loads((written / "model.safetensors.index.json").read_text())
    expected = {t.name for t in random_model.model_tensors(tiny_shape, len(build_tiny_tokenizer()))}
    assert set(index["weight_map"]) == expected
    shards = sorted(written.glob("*.safetensors"))
    assert len(shards) > 2 and set(index["weight_map"].values()) == {s.name for s in shards}
    total = 0
    for shard in shards:
        with safe_open(str(shard), framework="pt") as handle:
            names = list(handle.keys())
            assert all(index["weight_map"][name] == shard.name for name in names)
            sizes = [handle.get_tensor(name).nbytes for name in names]
        # a shard exceeds the limit only when it is one tensor larger than the limit
        assert sum(sizes) <= SHARD_BYTES or len(sizes) == 1
        total += sum(sizes)
    assert index["metadata"]["total_size"] == total


def test_weights_depend_on_seed_not_on_shard_size(random_model, tiny_shape, tmp_path):
    tokenizer = build_tiny_tokenizer()
    a = random_model.write_model(tmp_path / "a", tiny_shape, tokenizer, seed=3, max_shard_bytes=SHARD_BYTES)
    b = random_model.write_model(tmp_path / "b", tiny_shape, tokenizer, seed=3, max_shard_bytes=10**9)
    c = random_model.write_model(tmp_path / "c", tiny_shape, tokenizer, seed=4, max_shard_bytes=10**9)
    name = "model.layers.0.self_attn.q_proj.weight"
    read = {k: random_model.folder_tensors(folder, name)[name] for k, folder in (("a", a), ("b", b), ("c", c))}
    assert len(list(b.glob("*.safetensors"))) == 1
    assert torch.equal(read["a"], read["b"]) and not torch.equal(read["a"], read["c"])


def test_refuses_a_non_empty_folder_and_leaves_no_temporary(random_model, tiny_shape, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        random_model.write_model(out, tiny_shape, build_tiny_tokenizer())
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_hidden_state_stays_finite_layer_by_layer(written, random_model):
    rms = list(random_model.hidden_rms_per_layer(written, tokens=8))
    assert len(rms) == 3  # embeddings + 2 layers
    assert all(0 < value < 100 for value in rms)


def test_shape_overrides_keep_head_size_and_check_divisibility(random_model):
    shape = random_model.resolve_shape("llama2-70b", hidden=1024, layers=3)
    assert (shape.heads, shape.kv_heads, shape.layers, shape.intermediate) == (8, 1, 3, 28672)
    with pytest.raises(ValueError, match="head size"):
        random_model.resolve_shape("llama2-7b", hidden=100)
    with pytest.raises(ValueError, match="key/value"):
        random_model.resolve_shape("llama2-7b", hidden=256, heads=4, kv_heads=3)


def test_scale_cpu_describes_a_folder_from_its_headers(written, random_model, tiny_shape):
    spec = importlib.util.spec_from_file_location("scale_cpu", SCRIPT.parent / "scale_cpu.py")
    scale_cpu = importlib.util.module_from_spec(spec)
    sys.modules["scale_cpu"] = scale_cpu
    spec.loader.exec_module(scale_cpu)
    facts = scale_cpu.describe(written)
    tensors = random_model.model_tensors(tiny_shape, len(build_tiny_tokenizer()))
    assert facts.params == sum(t.numel for t in tensors)
    assert (facts.layers, facts.hidden, facts.intermediate, facts.kv_heads) == (2, 64, 128, 2)
    assert facts.disk_bytes >= 2 * facts.params and facts.float32_bytes == 4 * facts.params
    widths = [shape.intermediate for _, shape in scale_cpu.sweep_shapes("widths", 1024)]
    assert widths == [2752, 5504, 11008]
