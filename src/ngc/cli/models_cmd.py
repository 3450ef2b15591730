"""``ngc models``: the packaged aliases, whether their package is installed, and whether they are cached."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ngc.arch import ARCHS, supported_families
from ngc.cli.options import CacheDir
from ngc.models.packaged import PACKAGED, cached_folder, installed_version
from ngc.settings import cache_dir


def models_command(
    cache: CacheDir = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the list as JSON instead of a table.")] = False,
) -> None:
    """List packaged model aliases and the supported architecture families.

    Examples:

    \b
      ngc models
      ngc models --json
    """
    root = cache_dir(cache)
    if json_out:
        import json

        rows = {}
        for alias, packaged in PACKAGED.items():
            version = installed_version(packaged.distribution)
            rows[alias] = {
                "model": packaged.description,
                "package": packaged.distribution,
                "installed_version": version,
                "cached": bool(version and cached_folder(alias, root, version)),
            }
        families = {model_type: spec.family for model_type, spec in ARCHS.items()}
        print(json.dumps({"cache": str(root), "packaged": rows, "families": families}, indent=2))
        return
    table = Table(title=f"packaged models (cache: {root})")
    for column in ("alias", "model", "package", "cached"):
        table.add_column(column)
    for alias, packaged in PACKAGED.items():
        version = installed_version(packaged.distribution)
        table.add_row(
            alias,
            packaged.description,
            f"{packaged.distribution} {version}" if version else f"not installed: {packaged.install}",
            "yes" if version and cached_folder(alias, root, version) else "no (converted on first use)",
        )
    console = Console()
    console.print(table)
    console.print(f"supported families: {supported_families()}")
