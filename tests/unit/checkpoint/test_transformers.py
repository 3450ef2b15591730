"""After `import ngc`, transformers' own loaders read ngc checkpoints: same logits as ngc.load, no dense weights."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM, AutoTokenizer

import ngc
from ngc.api import compress
from ngc.checkpoint import hf, hook
from ngc.checkpoint.load import load
from ngc.config import CompressionConfig
from ngc.data.windows import CalibrationWindows
from ngc.models.tiny import build_tiny_model, build_tiny_tokenizer
from ngc.modules.factorized import FactorizedLinear


def checkpoint(tmp_path, family="llama", method="basis-sharing", **kwargs):
    model = build_tiny_model(family)
    tokens = torch.randint(0, 250, (3, 40), generator=torch.Generator().manual_seed(0))
    compress(model, CompressionConfig(method=method, ratio=0.3), CalibrationWindows(tokens, "random", None, 0))
    return model, ngc.save(model, tmp_path / "ckpt", tokenizer=build_tiny_tokenizer(), **kwargs)


def logits(model, seed: int = 3) -> torch.Tensor:
    ids = torch.randint(0, 250, (2, 16), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize(
    ("family", "method"), [("llama", "basis-sharing"), ("gpt2", "basis-sharing"), ("gpt_neox", "ngc"), ("qwen3", "ngc")]
)
def test_from_pretrained_equals_ngc_load_and_the_compressed_model(tmp_path, family, method):
    model, folder = checkpoint(tmp_path, family, method)
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, device_map="cpu")
    assert torch.equal(logits(loaded), logits(model))
    assert torch.equal(logits(loaded), logits(load(folder)))
    members = {m.module for g in model.ngc_compression.topology for m in g.members}
    assert all(isinstance(loaded.get_submodule(name), FactorizedLinear) for name in members)


def test_shared_basis_is_one_tensor_after_from_pretrained(tmp_path):
    _, folder = checkpoint(tmp_path, "llama", "basis-sharing")
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    layers = loaded.model.layers
    assert layers[0].self_attn.q_proj.bases[0] is layers[1].self_attn.q_proj.bases[0]
    assert not [n for n, p in loaded.named_parameters() if p.device.type == "meta"]


class Allocations(TorchDispatchMode):
    """Shapes of every tensor created off the meta device."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: set[tuple[int, ...]] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                self.shapes.add(tuple(tensor.shape))
        return out


def test_no_dense_weight_of_a_compressed_module_is_ever_allocated(tmp_path):
    model, folder = checkpoint(tmp_path, "llama", "svd")
    groups = model.ngc_compression.topology
    dense = {(m.m, m.n) for g in groups for m in g.members} | {(m.n, m.m) for g in groups for m in g.members}
    stored = {tuple(p.shape) for p in model.parameters()}
    with Allocations() as seen:
        loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert seen.shapes and not (seen.shapes & (dense - stored))
    with Allocations() as seen:
        load(folder)
    assert seen.shapes and not (seen.shapes & (dense - stored))
    assert torch.equal(logits(loaded), logits(model))


def test_transformers_without_ngc_refuses_loudly(tmp_path):
    _, folder = checkpoint(tmp_path)
    code = f"from transformers import AutoModelForCausalLM\nAutoModelForCausalLM.from_pretrained({str(folder)!r})\n"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode != 0
    assert "size mismatch" in run.stderr and "Unknown quantization type, got ngc" in run.stderr


def test_import_ngc_registers_only_when_transformers_loads_its_registry():
    code = (
        "import sys, ngc\n"
        "assert 'transformers' not in sys.modules\n"
        "from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING\n"
        "print(AUTO_QUANTIZER_MAPPING['ngc'].__name__)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "NgcHfQuantizer"


def test_a_transformers_without_the_registry_gives_one_clear_error(monkeypatch):
    from transformers.quantizers import auto

    monkeypatch.delattr(auto, "register_quantizer")
    with pytest.raises(hf.UnsupportedTransformersError, match="has no register_quantizer") as info:
        hf.register()
    assert "ngc.load" in info.value.hint
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hook.register_now()
    assert len(caught) == 1 and "from_pretrained cannot load ngc checkpoints" in str(caught[0].message)


def test_pipeline_generates_what_ngc_load_generates(tmp_path):
    from transformers import pipeline

    _, folder = checkpoint(tmp_path)
    generator = pipeline("text-generation", model=str(folder), device="cpu")
    assert isinstance(generator.model.model.layers[0].self_attn.q_proj, FactorizedLinear)
    text = generator("the cat", max_new_tokens=5, do_sample=False, return_full_text=False)[0]["generated_text"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("the cat", return_tensors="pt").input_ids
    reference = load(folder).generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert text == tokenizer.decode(reference[0, ids.shape[1] :], skip_special_tokens=True)


@pytest.mark.parametrize("loader", ["from_pretrained", "ngc.load"])
def test_save_pretrained_of_a_loaded_model_loads_again_identically(tmp_path, loader):
    model, folder = checkpoint(tmp_path, "gpt2", "basis-sharing")
    first = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32) if loader != "ngc.load" else load(folder)
    first.save_pretrained(tmp_path / "again")
    for again in (
        AutoModelForCausalLM.from_pretrained(tmp_path / "again", dtype=torch.float32),
        load(tmp_path / "again"),
    ):
        assert torch.equal(logits(again), logits(model))


def test_sharded_checkpoint_loads_both_ways(tmp_path):
    model, folder = checkpoint(tmp_path, "llama", "basis-sharing", max_shard_bytes=20_000)
    assert (folder / "model.safetensors.index.json").is_file() and not (folder / "model.safetensors").exists()
    assert len(list(folder.glob("model-*-of-*.safetensors"))) > 2
    assert torch.equal(logits(load(folder)), logits(model))
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)), logits(model))


def test_two_saves_write_byte_identical_weights(tmp_path):
    model, first = checkpoint(tmp_path)
    second = ngc.save(model, tmp_path / "second", tokenizer=build_tiny_tokenizer())
    for name in ("model.safetensors", "config.json"):
        digests = {hashlib.sha256((folder / name).read_bytes()).hexdigest() for folder in (first, second)}
        assert len(digests) == 1, name


def test_dtype_and_device_map_are_honoured(tmp_path):
    model, folder = checkpoint(tmp_path, "llama", "svd-llm", dtype=torch.bfloat16)
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, device_map="auto")
    assert loaded.dtype == torch.bfloat16
    assert torch.equal(logits(loaded), logits(load(folder, device_map="auto")))
