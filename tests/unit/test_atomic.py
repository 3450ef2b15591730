"""Atomic writes: a failed write never damages what was already there."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ngc.atomic import (
    atomic_folder,
    check_output_file,
    check_output_folder,
    merge_json_atomic,
    output_lock,
    write_json_atomic,
)
from ngc.errors import OutputError, UsageError


def test_json_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"a": object()})  # not serialisable: fails before the rename
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary left behind


def test_merge_keeps_entries_another_writer_added_and_ours_win(tmp_path):
    target = tmp_path / "results.json"
    mine = {"settings": {"model": "m"}, "cells": {"a": 1, "shared": "old"}}  # read when this run started
    write_json_atomic(target, {"settings": {"model": "m"}, "cells": {"a": 1, "b": 2, "shared": "theirs"}})
    mine["cells"]["shared"] = "mine"
    merged = merge_json_atomic(target, mine, "cells")
    assert merged == json.loads(target.read_text())
    assert merged["cells"] == {"a": 1, "b": 2, "shared": "mine"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no lock or temporary file left


def test_merge_from_many_processes_loses_no_entry(tmp_path):
    target = tmp_path / "results.json"
    script = (
        "import sys; from ngc.atomic import merge_json_atomic\n"
        "for i in range(40):\n"
        "    merge_json_atomic(sys.argv[1], {'cells': {f'{sys.argv[2]}-{i}': i}}, 'cells')\n"
    )
    writers = [subprocess.Popen([sys.executable, "-c", script, str(target), name]) for name in "abc"]
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0]
    assert len(json.loads(target.read_text())["cells"]) == 3 * 40


def test_folder_survives_a_failed_rewrite(tmp_path):
    final = tmp_path / "model"
    with atomic_folder(final) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError), atomic_folder(final) as tmp:
        (tmp / "weights").write_text("v2-partial")
        raise RuntimeError("interrupted")
    assert (final / "weights").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def _run_and_kill(script: str) -> None:
    """Run ``script`` in a child Python that ends itself with SIGKILL (no cleanup, like kill -9)."""
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr


def test_a_killed_write_leaves_the_old_folder_and_its_leftover_is_removed_next_time(tmp_path):
    final = tmp_path / "model"
    with atomic_folder(final) as tmp:
        (tmp / "weights").write_text("v1")
    _run_and_kill(
        "import os, signal\n"
        "from ngc.atomic import atomic_folder\n"
        f"with atomic_folder({str(final)!r}) as tmp:\n"
        "    (tmp / 'weights').write_text('v2-partial')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    assert (final / "weights").read_text() == "v1"
    assert len(list(tmp_path.iterdir())) > 1  # the killed writer's hidden folder (and lock file) are still there
    with atomic_folder(final) as tmp:  # the lock of a dead process does not block, and its leftover goes
        (tmp / "weights").write_text("v3")
    assert (final / "weights").read_text() == "v3"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_kill_between_the_two_renames_restores_the_old_folder(tmp_path):
    final = tmp_path / "model"
    with atomic_folder(final) as tmp:
        (tmp / "weights").write_text("v1")
    _run_and_kill(  # dies right after the old folder was renamed aside, before the new one is renamed in
        "import os, signal\n"
        "import ngc.atomic as atomic\n"
        "real = os.rename\n"
        "def rename_then_die(src, dst):\n"
        "    real(src, dst)\n"
        "    if '.old-' in str(dst):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "atomic.os.rename = rename_then_die\n"
        f"with atomic.atomic_folder({str(final)!r}) as tmp:\n"
        "    (tmp / 'weights').write_text('v2')\n"
    )
    assert not final.exists()
    with output_lock(final):  # taking the lock recovers what the dead writer left
        pass
    assert (final / "weights").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_the_old_folder_is_deleted_only_once_the_new_one_is_in_place(tmp_path, monkeypatch):
    final = tmp_path / "model"
    with atomic_folder(final) as tmp:
        (tmp / "weights").write_text("v1")
    seen: list[str] = []
    real_rmtree = shutil.rmtree

    def spy(path, *args, **kwargs):
        seen.append((final / "weights").read_text() if final.exists() else "missing")
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", spy)
    with atomic_folder(final) as tmp:
        (tmp / "weights").write_text("v2")
    assert seen == ["v2"]
    assert (final / "weights").read_text() == "v2"


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path):
    final = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sys\nfrom ngc.atomic import output_lock\nwith output_lock({str(final)!r}):\n"
            "    print('locked', flush=True)\n    sys.stdin.readline()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=f"another ngc run \\(process {holder.pid}\\)"), atomic_folder(final):
            pass
        assert not final.exists()
    finally:
        holder.communicate("\n", timeout=60)
    with atomic_folder(final) as tmp:  # released: the next writer goes ahead
        (tmp / "weights").write_text("v1")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_folder_that_appeared_meanwhile_is_not_replaced_without_force(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "theirs").write_text("another run's result")
    with pytest.raises(UsageError, match="appeared while this run was working"), atomic_folder(final, replace=False):
        pass
    assert (final / "theirs").read_text() == "another run's result"
    with atomic_folder(tmp_path / "new", replace=False) as tmp:  # a new or empty folder is fine
        (tmp / "weights").write_text("v1")
    assert (tmp_path / "new" / "weights").read_text() == "v1"


def test_lock_is_reentrant_within_one_process(tmp_path):
    final = tmp_path / "out"
    with output_lock(final), atomic_folder(final) as tmp:
        (tmp / "weights").write_text("v1")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("where", ["cwd", "ancestor", "input", "holds-input", "foreign"])
def test_force_never_replaces_what_is_not_a_result(tmp_path, monkeypatch, where):
    work = tmp_path / "work"
    model = work / "models" / "base"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "a.jpg").write_text("x")
    monkeypatch.chdir(work)
    target = {
        "cwd": Path("."),
        "ancestor": Path(".."),
        "input": model,
        "holds-input": work / "models",
        "foreign": foreign,
    }[where]
    fragment = {
        "cwd": "current directory",
        "ancestor": "current directory",
        "input": "input",
        "holds-input": "input",
        "foreign": "has no ngc.json",
    }[where]
    with pytest.raises(UsageError, match=fragment):
        check_output_folder(target, True, marker="ngc.json", inputs=[model])
    assert (model / "config.json").read_text() == "{}" and (foreign / "a.jpg").read_text() == "x"


def test_force_replaces_a_result_or_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "ngc.json").write_text("{}")
    check_output_folder(tmp_path / "empty", False, marker="ngc.json")
    check_output_folder(tmp_path / "ckpt", True, marker="ngc.json")
    with pytest.raises(UsageError, match="already exists"):
        check_output_folder(tmp_path / "ckpt", False, marker="ngc.json")


def test_an_output_under_a_file_is_refused_with_its_name(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="a-file/ckpt cannot be written"):
        check_output_folder(blocker / "ckpt", False, marker="ngc.json")
    with pytest.raises(OutputError, match="--json .*a-file/r.json cannot be written"):
        check_output_file(blocker / "r.json")
