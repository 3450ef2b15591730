"""``ngc models``: the packaged aliases, whether their package is installed, and whether they are cached."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ngc.arch import supported_families
from ngc.models.packaged import PACKAGED, cached_folder, installed_version
from ngc.settings import cache_dir


def models_command(
    cache: Annotated[
        Path | None, typer.Option("--cache-dir", metavar="DIR", help="Converted-model cache (default: $NGC_CACHE_DIR).")
    ] = None,
) -> None:
    """List packaged model aliases and the supported architecture families."""
    root = cache_dir(cache)
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
