"""The architecture table: blocks found per family, fused blocks split correctly, one home for names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from ngc.arch import ARCHS, ROLES, arch_spec, decoder_layers, find_blocks, role_weights
from ngc.errors import UnsupportedArchitectureError
from ngc.models.tiny import build_tiny_model, tiny_families

SRC = Path(__file__).resolve().parents[2] / "src" / "ngc"


def test_every_family_has_a_tiny_model():
    assert sorted(tiny_families()) == sorted(ARCHS)


@pytest.mark.parametrize("family", tiny_families())
def test_blocks_cover_every_role_of_every_layer(family):
    model = build_tiny_model(family)
    spec = arch_spec(model)
    blocks = find_blocks(model)
    n_layers = len(decoder_layers(model))
    assert n_layers == model.config.get_text_config().num_hidden_layers
    assert len(blocks) == n_layers * len(spec.blocks)
    for layer in range(n_layers):
        roles = [role for block in blocks if block.layer == layer for role in block.roles]
        assert sorted(roles) == sorted(spec.roles)
    assert set(spec.roles) <= set(ROLES)


@pytest.mark.parametrize("family", tiny_families())
def test_role_weights_reproduce_the_module_output(family):
    """x @ W_role.T, concatenated in the module's packing order, equals module(x) - bias."""
    model = build_tiny_model(family)
    spec = arch_spec(model)
    x = torch.randn(5, model.config.get_text_config().hidden_size)
    for block in find_blocks(model):
        module = model.get_submodule(block.name)
        inputs = x if block.in_features == x.shape[1] else torch.randn(5, block.in_features)
        expected = module(inputs)
        bias = getattr(module, "bias", None)
        if bias is not None:
            expected = expected - bias
        weights = role_weights(model, block)
        assert list(weights) == list(block.roles)
        outputs = [inputs @ W.T for W in weights.values()]
        for W in weights.values():
            assert W.shape[1] == block.in_features
        if spec.fused_per_head and len(outputs) > 1:
            heads = model.config.num_attention_heads
            stacked = torch.stack([out.reshape(5, heads, -1) for out in outputs], dim=2)  # (5, heads, roles, hd)
            got = stacked.reshape(5, -1)
        else:
            got = torch.cat(outputs, dim=1)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_gpt2_fused_qkv_split_matches_attention_queries():
    """The q slice of GPT-2's c_attn is exactly what the attention module uses as its query projection."""
    model = build_tiny_model("gpt2")
    block = find_blocks(model, roles=("q",))[0]
    assert block.roles == ("q", "k", "v")
    attn = model.get_submodule("transformer.h.0.attn")
    x = torch.randn(3, model.config.hidden_size)
    q_ref = attn.c_attn(x).split(model.config.hidden_size, dim=-1)[0]
    W_q = role_weights(model, block)["q"]
    torch.testing.assert_close(x @ W_q.T + attn.c_attn.bias[: model.config.hidden_size], q_ref)


def test_find_blocks_filters_roles():
    model = build_tiny_model("llama")
    blocks = find_blocks(model, roles=("q", "down"))
    assert {role for block in blocks for role in block.roles} == {"q", "down"}
    with pytest.raises(UnsupportedArchitectureError, match="unknown role"):
        find_blocks(model, roles=("qq",))


def test_unknown_architecture_names_the_supported_families():
    config = AutoConfig.for_model("bloom", vocab_size=16, hidden_size=8, n_layer=1, n_head=2)
    with pytest.raises(UnsupportedArchitectureError) as info:
        arch_spec(config)
    assert "'bloom'" in info.value.message
    for spec in ARCHS.values():
        assert spec.family in info.value.hint


def _family_names() -> set[str]:
    names = set(ARCHS)
    for spec in ARCHS.values():
        names.update(spec.layers.split("."))
        for suffix in spec.blocks:
            names.update(suffix.split("."))
    # words that are also plain English in docs and tables are too generic to flag
    return names - {"model", "layers", "decoder", "dense", "attention", "mlp"}


def test_architecture_names_live_only_in_the_table():
    """No string literal outside arch.py (and the tiny configs) names a model type or a family's module."""
    names = _family_names()
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name in ("arch.py", "tiny.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                parts = set(re.split(r"[.\s/]+", node.value))
                if parts & names:
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno}: {node.value!r}")
    assert not offenders, offenders
