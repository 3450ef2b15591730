"""Options several commands share, declared once."""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import ExitStack
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer

P = ParamSpec("P")
R = TypeVar("R")

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", metavar="DIR", help="Evaluation data folder (default: $NGC_DATA_DIR).")
]
CacheDir = Annotated[
    Path | None, typer.Option("--cache-dir", metavar="DIR", help="Converted-model cache (default: $NGC_CACHE_DIR).")
]
Device = Annotated[str, typer.Option("--device", metavar="DEVICE", help="torch device, e.g. cpu or cuda.")]
JsonOut = Annotated[Path | None, typer.Option("--json", metavar="OUT", help="Also write the results as JSON here.")]


#: locks taken by the running command (see :func:`releases_claims`)
_claims: ContextVar[ExitStack | None] = ContextVar("ngc_output_claims", default=None)


def releases_claims(command: Callable[P, R]) -> Callable[P, R]:
    """Decorate a command that calls :func:`claim_output`: its locks are released when it returns or fails."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with ExitStack() as stack:
            token = _claims.set(stack)
            try:
                return command(*args, **kwargs)
            finally:
                _claims.reset(token)

    return run


def claim_output(out: Path) -> None:
    """Hold ``out``'s write lock until the running command ends, so a second run on ``out`` stops at once."""
    from ngc.atomic import output_lock

    stack = _claims.get()
    if stack is None:
        raise RuntimeError("claim_output called outside a command decorated with releases_claims")
    stack.enter_context(output_lock(out))


def input_paths(*names: str | Path) -> list[Path]:
    """The given model names that are local files or folders: outputs must never replace these."""
    return [Path(name).expanduser() for name in names if Path(name).expanduser().exists()]
