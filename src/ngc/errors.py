"""Expected failures. Each carries a ``message`` naming what is wrong and a ``hint`` naming the fix.

The library raises these; only ``ngc.cli.main`` catches them and prints ``error:`` / ``hint:`` lines.
Where a built-in exception fits, the class inherits it too, so ``except FileNotFoundError`` still works.
"""

from __future__ import annotations


class NgcError(Exception):
    """Base class of every expected ngc failure."""

    #: exit code the CLI uses: 2 = bad usage (flags, names, ranges), 1 = the run failed
    exit_code: int = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class UsageError(NgcError, ValueError):
    """A flag or argument value that cannot be used (range, unknown name)."""

    exit_code = 2


class ModelNotFoundError(NgcError, FileNotFoundError):
    """A model name that is neither a packaged alias, a local path nor a reachable hub id."""

    exit_code = 2


class MissingPackageError(NgcError, ImportError):
    """An optional package (a packaged model, gguf, lm-eval) is not installed."""


class UnsupportedArchitectureError(NgcError, ValueError):
    """A model whose ``config.model_type`` has no row in ``ngc.arch.ARCHS``."""


class DataNotFoundError(NgcError, FileNotFoundError):
    """A named corpus or text file that cannot be found."""


class DataFormatError(NgcError, ValueError):
    """A text that cannot be used: empty, not UTF-8, or too short for one window."""


class OutputError(NgcError, OSError):
    """An output path that cannot be written: no permission, or another ngc run is writing it."""


class EvaluationError(NgcError, RuntimeError):
    """An evaluation whose result is incomplete (e.g. a metric the harness did not report)."""
