"""Perplexity: every family gives a finite value, equal to an independent computation with HF's own loss."""

from __future__ import annotations

import math

import pytest
import torch

from ngc.data.corpora import load_text_file
from ngc.data.windows import tokenize_text
from ngc.errors import DataFormatError
from ngc.eval.perplexity import perplexity
from ngc.models.load import load_model
from ngc.models.tiny import TINY_VOCAB, tiny_families


def _reference_ppl(model, tokens: torch.Tensor, window_len: int, bos: int | None) -> tuple[float, int]:
    """Independent: split the stream by hand, let transformers compute the shifted loss of each window."""
    stride = window_len - 1 if bos is not None else window_len
    nll, count = 0.0, 0
    for chunk in tokens.split(stride):
        ids = chunk if bos is None else torch.cat([torch.tensor([bos]), chunk])
        if ids.numel() < 2:
            continue
        with torch.no_grad():
            loss = model(input_ids=ids[None], labels=ids[None]).loss
        nll += float(loss) * (ids.numel() - 1)
        count += ids.numel() - 1
    return math.exp(nll / count), count


@pytest.mark.parametrize("family", tiny_families())
def test_tiny_models_give_the_reference_perplexity(family, tiny_folders, text_file):
    loaded = load_model(str(tiny_folders[family]))
    text = load_text_file(text_file)
    result = perplexity(loaded, text, window_len=64)
    assert math.isfinite(result.ppl)
    assert 0.5 * TINY_VOCAB < result.ppl < 2 * TINY_VOCAB  # untrained: about the vocabulary size
    bos = loaded.tokenizer.bos_token_id if loaded.spec.needs_bos else None
    assert result.bos == (bos is not None)
    expected_ppl, expected_tokens = _reference_ppl(loaded.model, tokenize_text(loaded.tokenizer, text.text), 64, bos)
    assert result.tokens == expected_tokens
    assert result.ppl == pytest.approx(expected_ppl, rel=1e-5)
    assert (result.window_len, result.dtype) == (64, "float32")


def test_max_windows_limits_the_work(tiny_folders, text_file):
    loaded = load_model(str(tiny_folders["llama"]))
    text = load_text_file(text_file)
    full = perplexity(loaded, text, window_len=32)
    part = perplexity(loaded, text, window_len=32, max_windows=2)
    assert part.windows == 2 and full.windows > 2
    assert part.tokens == 2 * 31


def test_window_is_capped_by_the_context(tiny_folders, text_file):
    loaded = load_model(str(tiny_folders["gpt2"]))
    result = perplexity(loaded, load_text_file(text_file), window_len=100_000)
    assert result.window_len == loaded.model.config.max_position_embeddings


def test_text_too_short_for_one_window(tiny_folders, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("tiny", encoding="utf-8")
    loaded = load_model(str(tiny_folders["llama"]))
    with pytest.raises(DataFormatError, match="fewer than one window"):
        perplexity(loaded, load_text_file(short), window_len=64)


def test_bfloat16_runs(tiny_folders, text_file):
    loaded = load_model(str(tiny_folders["qwen3"]), dtype="bfloat16")
    result = perplexity(loaded, load_text_file(text_file), window_len=64, max_windows=1)
    assert result.dtype == "bfloat16" and math.isfinite(result.ppl)
