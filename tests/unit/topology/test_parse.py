"""User-written topologies: rules and YAML files, validated with clear errors."""

from __future__ import annotations

import pytest

from ngc.errors import UsageError
from ngc.models.tiny import build_tiny_model
from ngc.topology.blocks import find_members
from ngc.topology.groups import build_topology


@pytest.fixture(scope="module")
def members():
    return find_members(build_tiny_model("llama"))


def ids(groups) -> set[str]:
    return {g.id for g in groups}


def test_mixed_family_shares_intra_groups_across_layers(members):
    assert ids(build_topology("intra-cross-2", members)) == {"L0-1:q+k+v", "L0-1:o", "L0-1:gate+up", "L0-1:down"}


def test_rules_choose_per_layer_and_type(members):
    groups = build_topology("q,k,v@0=intra; gate,up=cross-2; o=intra-cross-2", members)
    assert ids(groups) == {"L0:q+k+v", "L1:q", "L1:k", "L1:v", "L0-1:gate", "L0-1:up", "L0-1:o", "L0:down", "L1:down"}


def test_yaml_topology_with_explicit_groups(tmp_path, members):
    path = tmp_path / "topology.yaml"
    path.write_text(
        "groups:\n"
        "  - [model.layers.0.self_attn.q_proj, model.layers.1.self_attn.k_proj, model.layers.1.mlp.up_proj]\n"
        "rules: gate=cross-2\n"
        "default: intra\n"
    )
    groups = build_topology(str(path), members)
    assert "L0-1:q+k+up" in ids(groups) and "L0-1:gate" in ids(groups) and "L1:q+v" in ids(groups)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("q,x=intra", "unknown role"),
        ("q,k,v@a-b=intra", "bad layer list"),
        ("q,k,v", "unknown topology"),
        ("q,k,v=ring", "unknown topology 'ring'"),
    ],
)
def test_bad_rules_are_refused(members, text, message):
    with pytest.raises(UsageError, match=message):
        build_topology(text, members)


def test_bad_yaml_is_refused(tmp_path, members):
    path = tmp_path / "t.yaml"
    path.write_text("groups:\n  - [model.layers.0.self_attn.q_prj]\n")
    with pytest.raises(UsageError, match="unknown block name") as info:
        build_topology(str(path), members)
    assert "model.layers.0.self_attn.q_proj" in info.value.hint
    path.write_text("groups:\n  - [model.layers.0.self_attn.q_proj]\n  - [model.layers.0.self_attn.q_proj]\n")
    with pytest.raises(UsageError, match="two groups"):
        build_topology(str(path), members)
    path.write_text("groups:\n  - [model.layers.0.mlp.up_proj, model.layers.0.mlp.down_proj]\n")
    with pytest.raises(UsageError, match="input widths"):
        build_topology(str(path), members)
    with pytest.raises(UsageError, match="does not exist"):
        build_topology(str(tmp_path / "none.yaml"), members)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("q@0-999999999999=intra", "names layer 999999999999, but the model has 2 layers"),
        ("q@2=intra", "names layer 2, but the model has 2 layers"),
        ("q@1-0=intra", "runs backwards"),
    ],
)
def test_layers_are_checked_against_the_model_without_expanding_ranges(members, text, message):
    with pytest.raises(UsageError, match=message):
        build_topology(text, members)


def test_a_rule_that_matches_nothing_is_named(members):
    with pytest.raises(UsageError, match="rule 'gate@0=intra' matches nothing: every block it selects is taken"):
        build_topology("gate,up=intra; gate@0=intra", members)
    attention = [m for m in members if m.role in ("q", "k", "v", "o")]
    with pytest.raises(UsageError, match="rule 'down=cross-2' matches nothing: it selects no block") as info:
        build_topology("q,k,v=intra; down=cross-2", attention)
    assert "q, k, v, o" in info.value.hint
