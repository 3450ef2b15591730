"""Options several commands share, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", metavar="DIR", help="Evaluation data folder (default: $NGC_DATA_DIR).")
]
CacheDir = Annotated[
    Path | None, typer.Option("--cache-dir", metavar="DIR", help="Converted-model cache (default: $NGC_CACHE_DIR).")
]
Device = Annotated[str, typer.Option("--device", metavar="DEVICE", help="torch device, e.g. cpu or cuda.")]
JsonOut = Annotated[Path | None, typer.Option("--json", metavar="OUT", help="Also write the results as JSON here.")]
