"""Readable tables (rich) of the same results the JSON holds."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from ngc.accounting import Accounting, GroupRank
from ngc.eval.perplexity import PerplexityResult
from ngc.eval.speed import BenchResult
from ngc.eval.tasks import TaskResult


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


def tasks_table(results: Sequence[TaskResult], title: str) -> Table:
    """Accuracy per task, with its standard error and the mean over tasks."""
    table = Table(title=title)
    for column in ("task", "n", "metric", "acc", "± se", "acc_norm"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for result in results:
        table.add_row(
            result.task,
            f"{result.n:,}",
            result.metric,
            f"{result.acc:.4f}",
            "-" if result.acc_stderr is None else f"{result.acc_stderr:.4f}",
            "-" if result.acc_norm is None else f"{result.acc_norm:.4f}",
        )
    if len(results) > 1:
        mean = sum(result.acc for result in results) / len(results)
        table.add_row("mean", "", "", f"{mean:.4f}", "", "", style="bold")
    return table


def speed_table(result: BenchResult, title: str) -> Table:
    """Tokens/s of the model and the reference, the speed-up, its limit, and the fraction of the limit reached."""
    table = Table(
        title=title, caption=f"{result.threads} threads, median of {result.repeats} after {result.warmup} warm-up"
    )
    for column in ("phase", "shape", "tokens/s", "reference tokens/s", "speed-up", "limit", "of limit"):
        table.add_column(column, justify="left" if column in ("phase", "shape") else "right")
    rows = [("prefill", f"{row.batch} x {row.len}", row) for row in result.prefill]
    if result.decode is not None:
        row = result.decode
        rows.append(("decode", f"{row.batch} x {row.prompt} + {row.len}", row))
    for phase, shape, row in rows:
        table.add_row(
            phase,
            shape,
            f"{row.tokens_per_s:,.1f}",
            f"{row.reference_tokens_per_s:,.1f}",
            f"{row.speedup:.3f}",
            f"{row.limit:.3f}",
            f"{row.speedup / row.limit:.0%}",
        )
    return table


def _count(value: int) -> str:
    return f"{value:,}"


def accounting_table(accounting: Accounting, title: str) -> Table:
    """Dense vs kept: decoder linear weights, whole model, bytes, MACs per token (SPEC §3)."""
    table = Table(title=title)
    table.add_column("quantity")
    table.add_column("dense", justify="right")
    table.add_column("kept", justify="right")
    table.add_column("kept / dense", justify="right", style="bold")
    a = accounting
    rows = [
        ("decoder linear weights", a.decoder_linear_params_dense, a.decoder_linear_params_kept),
        ("model parameters", a.model_params_dense, a.model_params_kept),
        ("MACs per token (linears + head)", a.macs_per_token_dense, a.macs_per_token),
    ]
    for name, dense, kept in rows:
        table.add_row(name, _count(dense), _count(kept), f"{kept / dense:.4f}")
    table.add_row("stored bytes", "", _count(a.stored_bytes), "")
    table.caption = f"ratio removed R = {a.ratio_removed:.4f} of decoder linear weights; {len(a.groups)} groups"
    return table


def groups_table(groups: Sequence[GroupRank], title: str) -> Table:
    """Every group: id, rank, input width, members, dense and kept parameters."""
    table = Table(title=title)
    for column in ("group", "rank", "n", "members", "dense", "kept"):
        table.add_column(column, justify="left" if column in ("group", "members") else "right")
    for group in groups:
        roles = ", ".join(member.rsplit(":", 1)[-1] for member in group.members)
        table.add_row(
            group.id, str(group.rank), str(group.n), roles, _count(group.dense_params), _count(group.kept_params)
        )
    return table
