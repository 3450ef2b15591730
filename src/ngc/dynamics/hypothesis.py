"""Does a per-example dynamics figure go with answering correctly? (SPEC §8.4)

For one feature (stability S, driving ratio) over the scored items of a task: the point-biserial correlation with
correctness (Pearson's r against 0/1), a percentile bootstrap 95 % interval over items, a two-sided permutation
p-value, and the feature's mean over correct and over wrong items. Items whose feature is not finite are left out
and counted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ngc.eval.tasks import ExampleResult


@dataclass(frozen=True)
class Relation:
    feature: str
    n: int  # items used
    n_correct: int
    dropped: int  # items with a non-finite feature
    r: float  # point-biserial correlation with correctness
    ci_low: float  # bootstrap 95 % interval of r
    ci_high: float
    p_value: float  # two-sided permutation test of r = 0
    mean_correct: float
    mean_wrong: float

    def to_dict(self) -> dict:
        return asdict(self)


def _pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """r along the last dimension (batched)."""
    xc = x - x.mean(-1, keepdim=True)
    yc = y - y.mean(-1, keepdim=True)
    return (xc * yc).sum(-1) / (xc.pow(2).sum(-1).sqrt() * yc.pow(2).sum(-1).sqrt())


def relation(
    feature: str, values: Sequence[float], correct: Sequence[bool], resamples: int = 2000, seed: int = 0
) -> Relation:
    """The relation of ``values`` to ``correct`` over items (same order)."""
    if len(values) != len(correct):
        raise ValueError(f"{len(values)} values for {len(correct)} items")
    pairs = [(float(v), bool(c)) for v, c in zip(values, correct, strict=True) if math.isfinite(v)]
    dropped = len(values) - len(pairs)
    x = torch.tensor([v for v, _ in pairs], dtype=torch.float64)
    y = torch.tensor([float(c) for _, c in pairs], dtype=torch.float64)
    n, n_correct = len(pairs), int(y.sum())
    mean_correct = float(x[y == 1].mean()) if n_correct else math.nan
    mean_wrong = float(x[y == 0].mean()) if n_correct < n else math.nan
    if n < 3 or n_correct in (0, n) or float(x.std()) == 0.0:
        return Relation(
            feature, n, n_correct, dropped, math.nan, math.nan, math.nan, math.nan, mean_correct, mean_wrong
        )
    g = torch.Generator().manual_seed(seed)
    r = float(_pearson(x, y))
    index = torch.randint(0, n, (resamples, n), generator=g)
    boot = _pearson(x[index], y[index])
    boot = boot[torch.isfinite(boot)]  # a resample with one class only has no r
    low, high = (float(q) for q in torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=torch.float64)))
    shuffled = torch.stack([y[torch.randperm(n, generator=g)] for _ in range(resamples)])
    null = _pearson(x.expand(resamples, n), shuffled)
    p_value = float(((null.abs() >= abs(r) - 1e-12).sum() + 1) / (resamples + 1))
    return Relation(feature, n, n_correct, dropped, r, low, high, p_value, mean_correct, mean_wrong)


def prompt_sequences(
    examples: Sequence[ExampleResult], tokenizer, bos_token_id: int | None, length: int, min_tokens: int = 8
) -> tuple[list[ExampleResult], list[torch.Tensor]]:
    """Token ids of each scored prompt: its last ``length`` tokens, BOS first where the model needs one. Prompts
    shorter than ``min_tokens`` are left out together with their items."""
    from ngc.data.windows import tokenize_text

    kept, sequences = [], []
    for example in examples:
        ids = tokenize_text(tokenizer, example.context)
        if bos_token_id is not None:
            ids = torch.cat([torch.tensor([bos_token_id]), ids[-(length - 1) :]])
        else:
            ids = ids[-length:]
        if ids.numel() >= min_tokens:
            kept.append(example)
            sequences.append(ids)
    return kept, sequences
