"""Topology families (SPEC §2) and their validation."""

from __future__ import annotations

import math

import pytest

from ngc.errors import UsageError
from ngc.fit.allocate import uniform_rank
from ngc.models.tiny import build_tiny_model
from ngc.topology.blocks import find_members, parse_roles
from ngc.topology.groups import Group, build_topology, check_cover


@pytest.fixture(scope="module")
def members():
    return find_members(build_tiny_model("llama"))


def ids(groups) -> list[str]:
    return [g.id for g in groups]


def test_families_group_as_the_spec_says(members):
    assert ids(build_topology("per-matrix", members))[:7] == [
        "L0:q",
        "L0:k",
        "L0:v",
        "L0:o",
        "L0:gate",
        "L0:up",
        "L0:down",
    ]
    assert ids(build_topology("intra", members)) == [
        "L0:q+k+v",
        "L0:o",
        "L0:gate+up",
        "L0:down",
        "L1:q+k+v",
        "L1:o",
        "L1:gate+up",
        "L1:down",
    ]
    assert ids(build_topology("basis-sharing", members)) == [
        "L0:o",
        "L0:down",
        "L0-1:q",
        "L0-1:k",
        "L0-1:v",
        "L0-1:gate",
        "L0-1:up",
        "L1:o",
        "L1:down",
    ]
    assert set(ids(build_topology("cross-2", members))) >= {"L0-1:o", "L0-1:down"}


def test_every_topology_covers_every_member_once(members):
    for name in ("per-matrix", "intra", "basis-sharing", "cross-2", "cross-3"):
        groups = build_topology(name, members)
        assert sorted(m.id for g in groups for m in g.members) == sorted(m.id for m in members)


def test_groups_refuse_mixed_input_widths(members):
    up = next(m for m in members if m.id == "L0.up")
    down = next(m for m in members if m.id == "L0.down")
    with pytest.raises(UsageError, match="input widths"):
        Group((up, down))


def test_cover_refuses_duplicates_and_gaps(members):
    groups = list(build_topology("per-matrix", members))
    with pytest.raises(UsageError, match="two groups"):
        check_cover([*groups, groups[0]], members)
    with pytest.raises(UsageError, match="missing"):
        check_cover(groups[1:], members)


def test_uniform_rank_keeps_the_same_fraction(members):
    group = build_topology("intra", members)[0]  # q+k+v: m = 64 + 32 + 32, n = 64
    assert uniform_rank(group, 0.3) == math.floor(0.7 * 128 * 64 / (128 + 64))
    assert group.params_at_rank(uniform_rank(group, 0.3)) <= 0.7 * group.dense_params


def test_roles_parse_and_reject():
    assert parse_roles("v, q") == ("q", "v")
    assert parse_roles(None)[-1] == "down"
    with pytest.raises(UsageError, match="unknown role"):
        parse_roles("q,attn")
