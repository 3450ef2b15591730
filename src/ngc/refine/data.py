"""Refinement data (SPEC §5): a token stream cut into non-overlapping windows, its tail held out.

The default stream is the calibration corpus's split, all of it (not only the calibration windows). The held-out
windows are the last ones of the stream, so no training window overlaps them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from ngc.data.windows import calibration_text, tokenize_text
from ngc.errors import DataFormatError


@dataclass(frozen=True)
class RefinementData:
    """A 1-D token stream to distil on, with where it came from."""

    tokens: torch.Tensor  # (T,) int64
    source: str  # corpus name or file path
    split: str | None
    bos_token_id: int | None = None  # put at every window start (families that need BOS)


@dataclass(frozen=True)
class DistillWindows:
    """Training and held-out windows, each (N, L) int64."""

    train: torch.Tensor
    heldout: torch.Tensor
    provenance: dict

    @property
    def window_len(self) -> int:
        return int(self.train.shape[1])


def refinement_data(
    tokenizer,
    source: str,
    bos_token_id: int | None = None,
    explicit_dir: str | os.PathLike[str] | None = None,
) -> RefinementData:
    """The whole calibration split of a named corpus (train, else validation; never test), or a whole text file."""
    text = calibration_text(source, explicit_dir)
    return RefinementData(tokenize_text(tokenizer, text.text), text.name, text.split, bos_token_id)


def cut_windows(data: RefinementData, window_len: int) -> torch.Tensor:
    """Non-overlapping windows of ``window_len`` tokens (BOS first when the data has one): (N, L)."""
    text_len = window_len - 1 if data.bos_token_id is not None else window_len
    n_windows = data.tokens.numel() // text_len
    if n_windows < 1:
        raise DataFormatError(
            f"the refinement data {data.source} has {data.tokens.numel()} tokens, fewer than one window of "
            f"{window_len}",
            hint="give a longer --refine-data, or a shorter window (--calib-len)",
        )
    windows = data.tokens[: n_windows * text_len].reshape(n_windows, text_len)
    if data.bos_token_id is not None:
        windows = torch.cat([windows.new_full((n_windows, 1), data.bos_token_id), windows], dim=1)
    return windows


DEFAULT_HELDOUT_TOKENS = 4096
DEFAULT_HELDOUT_SHARE = 10  # the default held-out slice takes at most one window in ten


def split_windows(data: RefinementData, window_len: int, heldout_tokens: int | None) -> DistillWindows:
    """Training windows and the held-out tail: ``ceil(heldout_tokens / window_len)`` windows (0 = none).

    ``None`` (the default) holds out 4096 tokens, or one window in ten when the data is shorter (none below ten).
    """
    windows = cut_windows(data, window_len)
    if heldout_tokens is None:
        n_heldout = min(math.ceil(DEFAULT_HELDOUT_TOKENS / window_len), len(windows) // DEFAULT_HELDOUT_SHARE)
    else:
        n_heldout = math.ceil(heldout_tokens / window_len)
    if n_heldout and n_heldout >= len(windows):
        raise DataFormatError(
            f"the refinement data {data.source} has {len(windows)} window(s) of {window_len} tokens: too few for a "
            f"held-out slice of {n_heldout} window(s) and at least one training window",
            hint="give more --refine-data, a smaller --refine-heldout (0 = no early stopping), or a shorter window",
        )
    train, heldout = windows[: len(windows) - n_heldout], windows[len(windows) - n_heldout :]
    provenance = {
        "source": data.source,
        "split": data.split,
        "tokens": int(data.tokens.numel()),
        "window_len": window_len,
        "train_windows": len(train),
        "heldout_windows": len(heldout),
    }
    return DistillWindows(train, heldout, provenance)


def calibration_fallback(windows: torch.Tensor) -> DistillWindows:
    """Without refinement data: the calibration windows, no held-out slice (they overlap at random offsets)."""
    provenance = {
        "source": "calibration windows",
        "split": None,
        "tokens": int(windows.numel()),
        "window_len": int(windows.shape[1]),
        "train_windows": int(windows.shape[0]),
        "heldout_windows": 0,
    }
    return DistillWindows(windows, windows[:0], provenance)
