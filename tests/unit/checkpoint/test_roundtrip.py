"""compress -> save -> load gives identical logits; shared bases are stored once and re-aliased."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from ngc.api import compress, plan
from ngc.arch import decoder_layers
from ngc.checkpoint.load import load, load_checkpoint
from ngc.checkpoint.manifest import CheckpointError
from ngc.checkpoint.save import save_checkpoint
from ngc.config import CompressionConfig
from ngc.data.windows import CalibrationWindows
from ngc.errors import UsageError
from ngc.models.tiny import build_tiny_model, build_tiny_tokenizer
from ngc.topology.blocks import find_members


def compressed(family: str, method: str, ratio: float = 0.3):
    model = build_tiny_model(family)
    tokens = torch.randint(0, 250, (3, 40), generator=torch.Generator().manual_seed(0))
    config = CompressionConfig(method=method, ratio=ratio)
    result = compress(model, config, CalibrationWindows(tokens, "random", None, 0))
    _method, _members, groups, ranks = plan(build_tiny_model(family), config)
    return model, result, list(groups), ranks


def save(model, result, groups, ranks, out, force=False):
    record = {"config": result.config.to_dict(), "accounting": result.accounting.to_dict()}
    return save_checkpoint(model, build_tiny_tokenizer(), out, groups=groups, ranks=ranks, record=record, force=force)


@pytest.mark.parametrize(
    ("family", "method"),
    [
        ("llama", "svd-llm"),
        ("llama", "basis-sharing"),
        ("llama", "ngc"),
        ("gpt2", "basis-sharing"),
        ("gpt_neox", "svd"),
        ("gemma3_text", "asvd"),
        ("opt", "fwsvd"),
    ],
)
def test_save_load_round_trip_is_bit_exact(tmp_path, family, method):
    model, result, groups, ranks = compressed(family, method)
    out = save(model, result, groups, ranks, tmp_path / "ckpt")
    loaded = load(str(out))
    ids = torch.randint(0, 250, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded.model(input_ids=ids).logits)
    manifest = json.loads((out / "ngc.json").read_text())
    assert manifest["format_version"] == 1 and len(manifest["groups"]) == len(groups)


def test_shared_basis_is_stored_once_and_aliased_after_load(tmp_path):
    model, result, groups, ranks = compressed("llama", "basis-sharing")
    out = save(model, result, groups, ranks, tmp_path / "ckpt")
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    q_bases = [k for k in keys if "q_proj.bases" in k]
    assert len(q_bases) == 1  # one tensor for the q basis of layers 0 and 1
    loaded = load_checkpoint(out).model
    layers = decoder_layers(loaded)
    assert layers[0].self_attn.q_proj.bases[0] is layers[1].self_attn.q_proj.bases[0]


def tied(model) -> bool:
    return model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_tied_embeddings_stay_tied(tmp_path):
    model, result, groups, ranks = compressed("gpt2", "basis-sharing")
    assert tied(model)
    out = save(model, result, groups, ranks, tmp_path / "ckpt")
    assert tied(load_checkpoint(out).model)


def test_existing_folder_is_not_overwritten_without_force(tmp_path):
    model, result, groups, ranks = compressed("llama", "svd")
    out = save(model, result, groups, ranks, tmp_path / "ckpt")
    with pytest.raises(UsageError, match="already exists"):
        save(model, result, groups, ranks, out)
    save(model, result, groups, ranks, out, force=True)


def test_manifest_of_a_newer_format_is_refused(tmp_path):
    model, result, groups, ranks = compressed("llama", "svd")
    out = save(model, result, groups, ranks, tmp_path / "ckpt")
    manifest = json.loads((out / "ngc.json").read_text())
    (out / "ngc.json").write_text(json.dumps(manifest | {"format_version": 99}))
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(out)


def test_weights_that_do_not_match_the_manifest_are_refused(tmp_path):
    model, result, groups, ranks = compressed("llama", "svd")
    out = save(model, result, groups, ranks, tmp_path / "ckpt")
    other, other_result, other_groups, other_ranks = compressed("llama", "basis-sharing")
    save(other, other_result, other_groups, other_ranks, tmp_path / "other")
    (tmp_path / "other" / "model.safetensors").replace(out / "model.safetensors")
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(out)


def test_members_are_listed_in_the_manifest(tmp_path):
    model, result, groups, ranks = compressed("gpt2", "svd")
    out = save(model, result, groups, ranks, tmp_path / "ckpt")
    manifest = json.loads((out / "ngc.json").read_text())
    listed = [(m["module"], m["role"]) for g in manifest["groups"] for m in g["members"]]
    assert listed == [(m.module, m.role) for m in find_members(build_tiny_model("gpt2"))]
