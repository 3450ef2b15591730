"""Token windows: the non-overlapping evaluation plan (SPEC §7) and the seeded calibration sampler (SPEC §4).

With BOS (families that need it), every window is ``[BOS] + (L-1)`` text tokens and all its text tokens are
predicted. Without, a window is ``L`` text tokens and the last ``L-1`` are predicted. Either way every text
token sits in exactly one window; the last window may be shorter (it is kept, so no token is dropped).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ngc.data.corpora import CORPORA, Text, available_splits, load_corpus, load_text_file
from ngc.errors import DataFormatError, UsageError


def tokenize_text(tokenizer, text: str) -> torch.Tensor:
    """The whole text as one 1-D stream of token ids, without special tokens (BOS is added per window)."""
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def plan_windows(n_tokens: int, window_len: int, with_bos: bool) -> list[slice]:
    """Slices of the token stream, one per window, covering every token exactly once."""
    if window_len < 2:
        raise UsageError(f"window length {window_len} is too short", hint="use a window of at least 2 tokens")
    stride = window_len - 1 if with_bos else window_len  # text tokens per window
    if n_tokens < stride:
        raise DataFormatError(
            f"the text has {n_tokens} tokens, fewer than one window of {window_len}",
            hint="use a longer text or a smaller window length (--ppl-len / --calib-len)",
        )
    slices = [slice(start, min(start + stride, n_tokens)) for start in range(0, n_tokens, stride)]
    if not with_bos and slices[-1].stop - slices[-1].start < 2:
        slices.pop()  # a lone trailing token has nothing to be predicted from
    return slices


def window_input(tokens: torch.Tensor, window: slice, bos_token_id: int | None) -> torch.Tensor:
    """The model input of one window, shape (1, T): BOS prepended when given."""
    chunk = tokens[window]
    if bos_token_id is not None:
        chunk = torch.cat([chunk.new_tensor([bos_token_id]), chunk])
    return chunk.unsqueeze(0)


#: the sampled (N, L) int64 windows may take at most this fraction of the machine's memory
WINDOWS_MEMORY_FRACTION = 0.25


def _physical_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not a POSIX system that reports it
        return None


def check_window_count(n_windows: int, window_len: int, max_offsets: int, what: str = "the calibration text") -> None:
    """Refuse more windows than ``what`` has distinct offsets, or an (N, L) request that cannot fit in memory.

    ``max_offsets`` is the number of distinct start positions (or an upper bound of it, e.g. from the text's
    UTF-8 byte count before it is tokenised): windows beyond it only repeat.
    """
    if n_windows < 1:
        raise UsageError(f"{n_windows} calibration windows requested", hint="ask for at least 1 (--calib-samples)")
    if n_windows > max_offsets:
        raise UsageError(
            f"{n_windows} calibration windows of {window_len} tokens requested, but {what} has at most "
            f"{max_offsets} distinct windows of that length",
            hint=f"ask for {max_offsets} windows or fewer (--calib-samples; more only repeat), or a longer text",
        )
    memory = _physical_memory_bytes()
    needed = n_windows * window_len * 8  # int64 token ids
    if memory is not None and needed > WINDOWS_MEMORY_FRACTION * memory:
        raise UsageError(
            f"{n_windows} x {window_len} calibration tokens need {needed / 2**30:.1f} GiB for the token ids alone, "
            f"more than a quarter of this machine's {memory / 2**30:.1f} GiB",
            hint="lower --calib-samples or --calib-len",
        )


def check_calibration_request(n_windows: int, window_len: int, text: str) -> None:
    """Before tokenising: no tokenizer makes more tokens than the text has UTF-8 bytes (plus a leading one)."""
    max_tokens = len(text.encode("utf-8")) + 1
    if max_tokens < window_len - 1:  # even with BOS, one window needs window_len - 1 text tokens
        raise DataFormatError(
            f"the calibration text has at most {max_tokens} tokens, fewer than one window of {window_len}",
            hint="use a longer text or a shorter --calib-len",
        )
    check_window_count(n_windows, window_len, max(max_tokens - window_len + 2, 1))


def check_window_len(window_len: int, context_len: int | None, flag: str = "--calib-len") -> None:
    """Refuse windows longer than the model's context (its position table ends there)."""
    if context_len is not None and window_len > context_len:
        raise UsageError(
            f"{flag} {window_len} is longer than the model's context of {context_len} tokens",
            hint=f"use {flag} {context_len} or less",
        )


def sample_windows(
    tokens: torch.Tensor, n_windows: int, window_len: int, seed: int, bos_token_id: int | None = None
) -> torch.Tensor:
    """``n_windows`` windows of ``window_len`` tokens at seeded random offsets: (N, L), deterministic."""
    text_len = window_len - 1 if bos_token_id is not None else window_len
    if tokens.numel() < text_len:
        raise DataFormatError(
            f"the calibration text has {tokens.numel()} tokens, fewer than one window of {window_len}",
            hint="use a longer text or a shorter --calib-len",
        )
    check_window_count(n_windows, window_len, tokens.numel() - text_len + 1)
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - text_len + 1, (n_windows,), generator=generator)
    windows = torch.stack([tokens[start : start + text_len] for start in starts.tolist()])  # (N, text_len)
    if bos_token_id is not None:
        windows = torch.cat([windows.new_full((n_windows, 1), bos_token_id), windows], dim=1)
    return windows


def calibration_split(name: str, explicit_dir: str | os.PathLike[str] | None = None) -> str:
    """Train when present, else validation; never test (SPEC §7)."""
    present = available_splits(name, explicit_dir)
    return "train" if "train" in present else "validation"


@dataclass(frozen=True)
class CalibrationWindows:
    tokens: torch.Tensor  # (N, L) int64
    source: str  # corpus name or file path
    split: str | None
    seed: int

    @property
    def n_windows(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def window_len(self) -> int:
        return int(self.tokens.shape[1])


def calibration_text(source: str, explicit_dir: str | os.PathLike[str] | None = None) -> Text:
    """The text calibration draws from: a named corpus' calibration split, or a whole file."""
    if source in CORPORA:
        return load_corpus(source, calibration_split(source, explicit_dir), explicit_dir)
    return load_text_file(source)


def calibration_windows(
    tokenizer,
    source: str,
    n_windows: int,
    window_len: int,
    seed: int = 0,
    bos_token_id: int | None = None,
    explicit_dir: str | os.PathLike[str] | None = None,
) -> CalibrationWindows:
    """Seeded calibration windows from ``source`` (corpus name or text file), tokenised by ``tokenizer``."""
    text = calibration_text(source, explicit_dir)
    windows = sample_windows(tokenize_text(tokenizer, text.text), n_windows, window_len, seed, bos_token_id)
    return CalibrationWindows(windows, text.name, text.split, seed)
