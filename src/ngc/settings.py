"""Where ngc looks for data and where it caches converted models.

Precedence: an explicit argument (``--data-dir``, ``--cache-dir``) wins, then the environment variable, then the
default. Both are read at call time, never at import time.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "NGC_DATA_DIR"
CACHE_DIR_ENV = "NGC_CACHE_DIR"


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The evaluation-data directory: ``explicit``, else ``$NGC_DATA_DIR``, else None (not configured)."""
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else None


def cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Cache of converted models: ``explicit``, else ``$NGC_CACHE_DIR``, else ``$XDG_CACHE_HOME/ngc``."""
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "ngc"
