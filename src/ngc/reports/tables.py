"""Readable tables (rich) of the same results the JSON holds."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from ngc.eval.perplexity import PerplexityResult


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
