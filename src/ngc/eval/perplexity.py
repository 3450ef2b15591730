"""Perplexity over non-overlapping windows (SPEC §7).

The text is tokenised once; windows follow ``ngc.data.windows.plan_windows``; the NLL of every predicted token
is summed in float64, and ppl = exp(sum / count).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ngc.data.corpora import Text
from ngc.data.windows import plan_windows, tokenize_text, window_input
from ngc.errors import UsageError
from ngc.models.load import LoadedModel
from ngc.progress import progress


@dataclass(frozen=True)
class PerplexityResult:
    corpus: str
    split: str | None
    ppl: float
    mean_nll: float
    tokens: int  # predicted tokens counted
    windows: int
    window_len: int
    dtype: str
    bos: bool  # BOS at each window start

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@torch.inference_mode()
def window_nll(model: nn.Module, input_ids: torch.Tensor) -> tuple[float, int]:
    """Summed NLL (float64) of tokens ``input_ids[0, 1:]``, each predicted from all tokens before it.

    With BOS, position 0 is BOS and every text token is a target; without, the window's first token is
    context only.
    """
    logits = model(input_ids=input_ids.to(model.device), use_cache=False).logits[0]  # (T, vocab)
    predicted = logits[:-1].float()  # (T-1, vocab)
    targets = input_ids[0, 1:].to(predicted.device)
    nll = F.cross_entropy(predicted, targets, reduction="sum")
    return float(nll.double()), int(targets.numel())


def token_perplexity(
    model: nn.Module,
    tokens: torch.Tensor,
    window_len: int,
    bos_token_id: int | None = None,
    max_windows: int | None = None,
    desc: str = "perplexity",
) -> tuple[float, int, int]:
    """(summed NLL, predicted tokens, windows) over a 1-D token stream."""
    windows = plan_windows(tokens.numel(), window_len, with_bos=bos_token_id is not None)
    if max_windows:
        windows = windows[:max_windows]
    total_nll, total_tokens = 0.0, 0
    for window in progress(windows, desc=desc, unit="win"):
        nll, count = window_nll(model, window_input(tokens, window, bos_token_id))
        total_nll += nll
        total_tokens += count
    return total_nll, total_tokens, len(windows)


def check_eval_args(window_len: int, max_windows: int | None) -> None:
    """Range checks of the perplexity arguments, cheap enough to run before a model loads."""
    if window_len < 2:
        raise UsageError(f"--ppl-len {window_len} is too short", hint="use a window of at least 2 tokens")
    if max_windows is not None and max_windows < 0:
        raise UsageError(f"--max-windows {max_windows} is negative", hint="use 0 (all windows) or more")


def perplexity(
    loaded: LoadedModel, text: Text, window_len: int = 2048, max_windows: int | None = None
) -> PerplexityResult:
    """Perplexity of ``loaded`` on ``text``; the window is capped by the model's context."""
    check_eval_args(window_len, max_windows)
    if loaded.context_len:
        window_len = min(window_len, loaded.context_len)
    if loaded.spec.needs_bos and loaded.tokenizer.bos_token_id is None:
        raise UsageError(
            f"{loaded.spec.family} models need BOS at each window, but this tokenizer defines none",
            hint="use the tokenizer that ships with the model",
        )
    tokens = tokenize_text(loaded.tokenizer, text.text)
    nll, count, n_windows = token_perplexity(
        loaded.model, tokens, window_len, loaded.bos_token_id, max_windows, desc=f"ppl {text.name}"
    )
    mean_nll = nll / count
    return PerplexityResult(
        corpus=text.name,
        split=text.split,
        ppl=math.exp(mean_nll),
        mean_nll=mean_nll,
        tokens=count,
        windows=n_windows,
        window_len=window_len,
        dtype=loaded.dtype,
        bos=loaded.bos_token_id is not None,
    )
