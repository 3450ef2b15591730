"""The one progress-bar helper. Bars go to stderr; ``NGC_NO_PROGRESS=1`` turns them off."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    disable = os.environ.get("NGC_NO_PROGRESS", "") not in ("", "0")
    yield from tqdm(items, desc=desc, total=total, unit=unit, disable=disable, leave=False, dynamic_ncols=True)
