"""Atomic writes: a failed write never damages what was already there."""

from __future__ import annotations

import json

import pytest

from ngc.atomic import atomic_folder, write_json_atomic


def test_json_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"a": object()})  # not serialisable: fails before the rename
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary left behind


def test_folder_survives_a_failed_rewrite(tmp_path):
    final = tmp_path / "model"
    with atomic_folder(final) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError), atomic_folder(final) as tmp:
        (tmp / "weights").write_text("v2-partial")
        raise RuntimeError("interrupted")
    assert (final / "weights").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
