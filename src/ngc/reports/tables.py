"""Readable tables (rich) of the same results the JSON holds."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from ngc.eval.perplexity import PerplexityResult


def stdout_console() -> Console:
    """Console for result tables: full width on a terminal, 120 columns when piped (no truncated names)."""
    console = Console()
    return console if console.is_terminal else Console(width=120)


def perplexity_table(results: Sequence[PerplexityResult], title: str) -> Table:
    table = Table(title=title)
    for column in ("corpus", "split", "window", "windows", "tokens", "BOS", "dtype", "mean NLL"):
        table.add_column(column, justify="left" if column in ("corpus", "split", "dtype") else "right")
    table.add_column("ppl", justify="right", style="bold")
    for result in results:
        table.add_row(
            result.corpus,
            result.split or "-",
            str(result.window_len),
            str(result.windows),
            f"{result.tokens:,}",
            "yes" if result.bos else "no",
            result.dtype,
            f"{result.mean_nll:.4f}",
            f"{result.ppl:.3f}",
        )
    return table
