"""``ngc info DIR``: what a checkpoint holds (method, calibration, accounting, every group's rank)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def info_command(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="A checkpoint folder written by `ngc compress`.")],
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the whole manifest as JSON instead of tables.")
    ] = False,
    groups: Annotated[bool, typer.Option("--groups", help="Also list every group with its rank.")] = False,
) -> None:
    """Show a checkpoint's manifest: method, ratio, calibration, base model and accounting. Loads no weights.

    Examples:

    \b
      ngc info out/smol-svdllm-30
      ngc info out/smol-svdllm-30 --groups
      ngc info out/smol-svdllm-30 --json > manifest.json
    """
    from rich.console import Console

    from ngc.accounting import Accounting
    from ngc.checkpoint.load import require_checkpoint
    from ngc.checkpoint.manifest import read_manifest
    from ngc.reports.tables import accounting_table, groups_table, stdout_console

    require_checkpoint(folder)
    manifest = read_manifest(folder)
    if json_out:
        print(json.dumps(manifest, indent=2))
        return
    accounting = Accounting.from_dict(manifest["accounting"])
    config, calibration = manifest.get("config", {}), manifest.get("calibration", {})
    base = manifest.get("base_model", {})
    console = stdout_console()
    topology = config.get("topology") or "the method's own"
    console.print(
        f"[bold]{folder}[/bold]: {config.get('method')} at R = {config.get('ratio')} "
        f"(topology: {topology}; roles: {','.join(config.get('roles', []))}), stored as {manifest.get('dtype')}"
        + (f" with {factors} factors" if (factors := manifest.get("factor_dtype", "float")) != "float" else "")
    )
    console.print(f"base model: {base.get('name')} (weights sha256 {str(base.get('weights_sha256'))[:16]}...)")
    if calibration.get("source"):
        console.print(
            f"calibration: {calibration.get('n_windows')} x {calibration.get('window_len')} tokens of "
            f"{calibration.get('source')} ({calibration.get('split') or 'file'}), seed {calibration.get('seed')}"
        )
    console.print(accounting_table(accounting, title="accounting"))
    if groups:
        console.print(groups_table(accounting.groups, title="groups"))
    else:
        Console(stderr=True).print(f"{len(accounting.groups)} groups; --groups lists them")
