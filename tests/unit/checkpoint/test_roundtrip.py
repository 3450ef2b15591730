"""compress -> save -> load gives identical logits; shared tensors are stored once and re-aliased."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import ngc.checkpoint.save as save_module
from ngc.api import compress
from ngc.arch import decoder_layers
from ngc.checkpoint.load import load, load_checkpoint
from ngc.checkpoint.manifest import CheckpointError, base_identity
from ngc.checkpoint.save import save_checkpoint
from ngc.config import CompressionConfig
from ngc.data.windows import CalibrationWindows
from ngc.errors import UsageError
from ngc.fit.methods import METHODS
from ngc.models.tiny import build_tiny_model, build_tiny_tokenizer
from ngc.topology.blocks import find_members


def compressed(family: str, method: str, ratio: float = 0.3):
    model = build_tiny_model(family)
    base = base_identity(model, f"tiny-{family}")
    tokens = torch.randint(0, 250, (3, 40), generator=torch.Generator().manual_seed(0))
    result = compress(
        model, CompressionConfig(method=method, ratio=ratio), CalibrationWindows(tokens, "random", None, 0)
    )
    return model, result, base


def save(model, result, base, out, **kwargs):
    return save_checkpoint(model, build_tiny_tokenizer(), out, result, base, **kwargs)


def logits(model, seed: int = 3) -> torch.Tensor:
    ids = torch.randint(0, 250, (2, 16), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("method", list(METHODS))
def test_round_trip_is_bit_exact_for_every_method(tmp_path, method):
    model, result, base = compressed("llama", method)
    out = save(model, result, base, tmp_path / "ckpt")
    assert torch.equal(logits(model), logits(load(out)))


@pytest.mark.parametrize(
    ("family", "method"),
    [("gpt2", "basis-sharing"), ("gpt_neox", "ngc"), ("gemma3", "svd-llm"), ("opt", "basis-sharing"), ("qwen3", "ngc")],
)
def test_round_trip_is_bit_exact_across_families(tmp_path, family, method):
    model, result, base = compressed(family, method)
    out = save(model, result, base, tmp_path / "ckpt")
    loaded = load_checkpoint(out)
    assert torch.equal(logits(model), logits(loaded.model))
    generated = loaded.model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert generated.shape == (1, 5)


def test_shared_basis_is_stored_once_and_aliased_after_load(tmp_path):
    model, result, base = compressed("llama", "basis-sharing")
    out = save(model, result, base, tmp_path / "ckpt")
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    assert len([k for k in keys if "q_proj.bases" in k]) == 1  # one tensor for the q basis of layers 0 and 1
    layers = decoder_layers(load(out))
    assert layers[0].self_attn.q_proj.bases[0] is layers[1].self_attn.q_proj.bases[0]


def tied(model) -> bool:
    return model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_tied_embeddings_stay_tied(tmp_path):
    model, result, base = compressed("gpt2", "basis-sharing")
    assert tied(model)
    assert tied(load(save(model, result, base, tmp_path / "ckpt")))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_saved_dtype_and_size(tmp_path, dtype):
    model, result, base = compressed("llama", "svd-llm")
    out = save(model, result, base, tmp_path / "ckpt", dtype=dtype)
    reloaded = load(out)
    assert reloaded.dtype == dtype
    stored = result.accounting.model_params_kept * 2
    size = (out / "model.safetensors").stat().st_size
    assert stored <= size < stored * 1.1 + 20_000  # tensors plus the header


def test_manifest_records_what_it_must(tmp_path):
    model, result, base = compressed("gpt2", "svd")
    out = save(model, result, base, tmp_path / "ckpt")
    manifest = json.loads((out / "ngc.json").read_text())
    assert manifest["format_version"] == 2
    assert set(manifest["versions"]) == {"ngc", "torch", "transformers", "safetensors"}
    assert manifest["base_model"]["name"] == "tiny-gpt2" and len(manifest["base_model"]["weights_sha256"]) == 64
    assert manifest["calibration"]["n_windows"] == 3 and manifest["config"]["method"] == "svd"
    listed = [(m["module"], m["role"]) for g in manifest["groups"] for m in g["members"]]
    assert listed == [(m.module, m.role) for m in find_members(build_tiny_model("gpt2"))]


def test_existing_folder_is_not_overwritten_without_force(tmp_path):
    model, result, base = compressed("llama", "svd")
    out = save(model, result, base, tmp_path / "ckpt")
    with pytest.raises(UsageError, match="already exists"):
        save(model, result, base, out)
    save(model, result, base, out, force=True)


def test_an_interrupted_save_leaves_nothing_behind(tmp_path, monkeypatch):
    model, result, base = compressed("llama", "svd")

    def fail(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(save_module, "write_model_tensors", fail)
    with pytest.raises(KeyboardInterrupt):
        save(model, result, base, tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def checkpoint(tmp_path):
    model, result, base = compressed("llama", "basis-sharing")
    return save(model, result, base, tmp_path / "ckpt")


def edit_manifest(folder, **changes):
    manifest = json.loads((folder / "ngc.json").read_text())
    (folder / "ngc.json").write_text(json.dumps(manifest | changes))


def test_newer_format_is_refused(checkpoint):
    edit_manifest(checkpoint, format_version=99)
    with pytest.raises(CheckpointError, match="format version 99") as info:
        load(checkpoint)
    assert "upgrade" in info.value.hint


def test_truncated_weights_are_refused(checkpoint):
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors cannot be read"):
        load(checkpoint)


def test_corrupted_header_is_refused(checkpoint):
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(b"\xff" * 64 + weights.read_bytes()[64:])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load(checkpoint)


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_missing_or_extra_tensors_are_refused(checkpoint, change):
    weights = checkpoint / "model.safetensors"
    with safe_open(str(weights), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(weights))
    if change == "missing":
        tensors.pop(next(k for k in tensors if "down_proj.A" in k))
    else:
        tensors["model.layers.0.mlp.extra"] = torch.zeros(2)
    save_file(tensors, str(weights), metadata=metadata)
    with pytest.raises(CheckpointError, match="1 tensor.s. missing" if change == "missing" else "1 unexpected"):
        load(checkpoint)


def test_weights_from_another_run_are_refused(tmp_path, checkpoint):
    model, result, base = compressed("llama", "svd")
    other = save(model, result, base, tmp_path / "other")
    (other / "model.safetensors").replace(checkpoint / "model.safetensors")
    with pytest.raises(CheckpointError, match="do not match|share tensors differently|has shape"):
        load(checkpoint)


def test_a_different_base_model_config_is_refused(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps(config | {"intermediate_size": 256}))
    with pytest.raises(CheckpointError, match="different base model") as info:
        load(checkpoint)
    assert "intermediate_size 128 vs 256" in str(info.value)


def test_a_manifest_without_its_keys_is_refused(checkpoint):
    manifest = json.loads((checkpoint / "ngc.json").read_text())
    del manifest["groups"]
    (checkpoint / "ngc.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="lacks groups"):
        load(checkpoint)


def test_a_path_that_is_not_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not an ngc checkpoint"):
        load(tmp_path)
    with pytest.raises(CheckpointError, match="not a folder"):
        load(tmp_path / "nothing")
