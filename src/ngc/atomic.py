"""Atomic writes: a file or folder appears whole under its final name, or not at all.

A folder is written beside its final name as ``.NAME.new-PID-XXXXXXXX.tmp`` and renamed in. An old folder is
first renamed aside (``.NAME.old-PID-XXXXXXXX.tmp``), the new one renamed in, and only then is the old one
deleted, so a kill at any moment leaves either the old or the new folder under NAME, plus at most one hidden
leftover. Leftovers of dead processes are cleaned (or an aside folder restored) the next time NAME is written.
Writers of one NAME take an exclusive lock, ``.NAME.lock`` beside it (POSIX ``flock``, released by the kernel
if the process dies), so two runs cannot write the same folder at once.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ngc.errors import OutputError, UsageError

log = logging.getLogger(__name__)

#: lock files this process holds, with their open descriptor and nesting depth (a lock is re-entrant)
_held: dict[Path, tuple[int, int]] = {}


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a result file is ordinary
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> Path:
    """JSON with two-space indentation, written atomically."""
    return write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


@contextmanager
def _folder_locked(folder: Path) -> Iterator[None]:
    """Wait for, then hold, an exclusive ``flock`` on ``folder`` itself (no lock file is left behind)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def merge_json_atomic(path: str | os.PathLike[str], payload: dict[str, Any], key: str) -> dict[str, Any]:
    """Write ``payload`` to ``path``, keeping the entries of ``payload[key]`` that another process wrote meanwhile.

    For a results file that several runs add entries to side by side: each run merges its own entries (which win)
    into what is on disk at the moment it writes, under an exclusive lock on the folder, so no run loses another's
    entries. Returns what was written.
    """
    path = Path(path)
    with _folder_locked(path.parent):
        on_disk = json.loads(path.read_text()) if path.exists() else {}
        merged = payload | {key: on_disk.get(key, {}) | payload.get(key, {})}
        write_json_atomic(path, merged)
    return merged


# --- checks on an output folder, before any work -------------------------------------------------------------


def _is_within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (both resolved)."""
    return path == folder or folder in path.parents


def check_output_folder(
    out: Path,
    force: bool,
    *,
    marker: str,
    inputs: Sequence[Path] = (),
    flag: str = "--out",
) -> None:
    """Refuse an output folder that cannot or must not be (re)placed; make sure its parent is writable.

    ``out`` may be new, an empty folder, or (with ``force``) a folder holding ``marker`` - the file that every
    folder this writer makes contains. Never the current directory, one of its ancestors, or an ancestor of
    (or equal to) one of ``inputs``.
    """
    resolved = out.expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {out} is a file", hint="give a folder name")
    if _is_within(Path.cwd().resolve(), resolved):
        raise UsageError(
            f"{flag} {out} is the current directory or contains it",
            hint="give a new folder name, e.g. " + f"{flag} out/result",
        )
    for source in inputs:
        if _is_within(source.expanduser().resolve(), resolved):
            raise UsageError(f"{flag} {out} is or contains the input {source}", hint="write to another folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            hint = "choose another folder, or pass --force to replace it"
            raise UsageError(f"{flag} {out} already exists", hint=hint)
        if not (out / marker).is_file():
            raise UsageError(
                f"{flag} {out} is not a folder this command wrote (it has no {marker}); --force replaces only those "
                "(or an empty folder)",
                hint="choose another folder, or remove it yourself",
            )
    check_writable_parent(out, flag)


def check_writable_parent(path: Path, flag: str) -> None:
    """Create ``path``'s parent folder if needed and write (then remove) a probe file there."""
    parent = path.expanduser().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(
            f"{flag} {path} cannot be written: {exc.strerror or exc}",
            hint=f"choose a folder you can write to, or fix the permissions of {parent}",
        ) from exc


def check_output_file(path: Path | None, flag: str = "--json") -> None:
    """Refuse a result file that is a folder, in a missing folder, or that cannot be written (a probe file)."""
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder", hint=f"give a file name, e.g. {flag} results/out.json")
    if not path.parent.exists():
        raise UsageError(f"{flag} {path}: its folder {path.parent} does not exist", hint=f"mkdir -p {path.parent}")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{flag} {path} cannot be written: permission denied", hint="choose another file")
    check_writable_parent(path, flag)


# --- the lock and the leftovers ------------------------------------------------------------------------------


def _absolute(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute with ``.`` and ``..`` removed, symbolic links kept (a link is what gets replaced)."""
    return Path(os.path.abspath(Path(path).expanduser()))


def _lock_path(final: Path) -> Path:
    return final.parent.resolve() / f".{final.name}.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _open_locked(lock: Path, final: Path) -> int:
    """Open and ``flock`` the lock file; retry when its holder removed it between our open and our lock."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputError(
                f"{final} is being written by another ngc run (process {holder})",
                hint="wait for it to finish, or choose another folder",
            ) from None
        held, current = os.fstat(fd), (os.stat(lock) if lock.exists() else None)
        if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def _leftovers(final: Path) -> list[tuple[Path, str, int]]:
    """Hidden ``(path, "new" | "old", pid)`` folders that writers of ``final`` leave while they work."""
    pattern = re.compile(rf"\.{re.escape(final.name)}\.(new|old)-(\d+)-[0-9a-f]{{8}}\.tmp")
    found = []
    for path in final.parent.iterdir():
        match = pattern.fullmatch(path.name)
        if match:
            found.append((path, match[1], int(match[2])))
    return sorted(found, key=lambda item: item[1] != "old")  # an aside folder first: it may need restoring


def recover_leftovers(final: Path) -> None:
    """Clean what a killed writer of ``final`` left: restore an aside folder if ``final`` is gone, else delete."""
    for path, kind, pid in _leftovers(final):
        if _pid_alive(pid):
            continue
        if kind == "old" and not final.exists():
            os.rename(path, final)
            log.info("restored %s from %s, left by a killed run", final, path.name)
        else:
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed %s, left by a killed run", path)


@contextmanager
def output_lock(final: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the exclusive lock of ``final`` (re-entrant within this process); clean leftovers on taking it.

    Raises :class:`ngc.errors.OutputError` at once if another process holds it.
    """
    final = _absolute(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{final} cannot be written: {exc.strerror or exc}", hint="choose another folder") from exc
    lock = _lock_path(final)
    if lock in _held:
        fd, depth = _held[lock]
        _held[lock] = (fd, depth + 1)
    else:
        try:
            fd = _open_locked(lock, final)
        except PermissionError as exc:
            raise OutputError(f"{final} cannot be written: permission denied", hint="choose another folder") from exc
        _held[lock] = (fd, 1)
        recover_leftovers(final)
    try:
        yield
    finally:
        fd, depth = _held[lock]
        if depth > 1:
            _held[lock] = (fd, depth - 1)
        else:
            del _held[lock]
            lock.unlink(missing_ok=True)  # while still locked: a waiting opener sees the inode change and retries
            os.close(fd)


# --- folders -------------------------------------------------------------------------------------------------


def _temp_name(final: Path, kind: str) -> Path:
    return final.parent / f".{final.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}.tmp"


def _swap_in(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` is renamed aside first and deleted last."""
    if not final.exists():
        os.rename(tmp, final)
        return
    aside = _temp_name(final, "old")
    os.rename(final, aside)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(aside, final)
        raise
    shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def atomic_folder(final: str | os.PathLike[str], *, replace: bool = True) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``final``; on success it takes the place of ``final``.

    The whole write holds ``final``'s lock. An existing non-empty ``final`` is replaced only if ``replace``
    (callers check first that it is theirs to replace). On any exception the temporary folder is removed and
    ``final`` is left as it was.
    """
    final = _absolute(final)
    with output_lock(final):
        if final.exists() and not final.is_dir():
            raise UsageError(f"{final} is a file", hint="give a folder name")
        if not replace and final.is_dir() and any(final.iterdir()):
            raise UsageError(
                f"{final} appeared while this run was working (another run wrote it?)",
                hint="choose another folder, or pass --force to replace it",
            )
        tmp = _temp_name(final, "new")
        tmp.mkdir(mode=0o755)
        try:
            yield tmp
            _swap_in(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


@contextmanager
def replace_with(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file name beside ``path``; on success it is renamed over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
