"""Evaluation windows cover every token once; the calibration sampler is seeded and never reads test."""

from __future__ import annotations

import pytest
import torch

import ngc.data.windows as windows_module
from ngc.data.windows import (
    calibration_split,
    calibration_windows,
    check_calibration_request,
    check_window_len,
    plan_windows,
    sample_windows,
    window_input,
)
from ngc.errors import DataFormatError, UsageError
from ngc.models.tiny import build_tiny_tokenizer


@pytest.mark.parametrize("with_bos", [False, True])
@pytest.mark.parametrize(("n_tokens", "window_len"), [(100, 10), (101, 10), (109, 10), (10, 10), (2048, 512)])
def test_windows_cover_every_token_exactly_once(n_tokens, window_len, with_bos):
    windows = plan_windows(n_tokens, window_len, with_bos)
    covered = torch.zeros(n_tokens, dtype=torch.long)
    for window in windows:
        covered[window] += 1
        assert window.stop - window.start <= window_len - (1 if with_bos else 0)
    if with_bos:
        assert covered.eq(1).all()
    else:  # a lone trailing token cannot be predicted and is the only one allowed out
        assert covered[:-1].eq(1).all() and covered[-1] <= 1


@pytest.mark.parametrize("with_bos", [False, True])
def test_window_inputs_and_predicted_token_count(with_bos):
    tokens = torch.arange(1000, 1103)  # 103 tokens
    bos = 7 if with_bos else None
    windows = plan_windows(tokens.numel(), 10, with_bos)
    inputs = [window_input(tokens, window, bos) for window in windows]
    assert all(x.shape[0] == 1 and x.shape[1] <= 10 for x in inputs)
    text_tokens = torch.cat([x[0, 1:] if with_bos else x[0] for x in inputs])
    assert torch.equal(text_tokens, tokens[: text_tokens.numel()])
    predicted = sum(x.shape[1] - 1 for x in inputs)
    expected = tokens.numel() if with_bos else tokens.numel() - len(windows)
    assert predicted == expected
    if with_bos:
        assert all(int(x[0, 0]) == bos for x in inputs)


def test_text_shorter_than_one_window_is_an_error():
    with pytest.raises(DataFormatError, match="fewer than one window"):
        plan_windows(9, 10, with_bos=False)
    with pytest.raises(UsageError):
        plan_windows(100, 1, with_bos=False)


def test_sampler_is_deterministic_and_seed_dependent():
    tokens = torch.arange(10_000)
    first = sample_windows(tokens, 8, 64, seed=3)
    again = sample_windows(tokens, 8, 64, seed=3)
    other = sample_windows(tokens, 8, 64, seed=4)
    assert first.shape == (8, 64)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    # each window is a contiguous slice of the stream
    assert torch.equal(first[:, 1:] - first[:, :-1], torch.ones(8, 63, dtype=torch.long))


def test_sampler_with_bos_keeps_the_window_length():
    windows = sample_windows(torch.arange(500), 4, 32, seed=0, bos_token_id=-1)
    assert windows.shape == (4, 32)
    assert windows[:, 0].eq(-1).all()


def test_sampler_rejects_short_text_and_zero_windows():
    with pytest.raises(DataFormatError):
        sample_windows(torch.arange(10), 2, 64, seed=0)
    with pytest.raises(UsageError):
        sample_windows(torch.arange(100), 0, 8, seed=0)


def test_calibration_uses_validation_when_train_is_missing_never_test(data_dir):
    assert calibration_split("wikitext2", data_dir) == "validation"
    (data_dir / "wikitext2_raw" / "wiki.train.raw").write_text(" train text \n" * 50, encoding="utf-8")
    assert calibration_split("wikitext2", data_dir) == "train"


def test_calibration_windows_come_from_the_calibration_split(data_dir):
    tokenizer = build_tiny_tokenizer()
    calib = calibration_windows(tokenizer, "wikitext2", n_windows=3, window_len=16, seed=1, explicit_dir=data_dir)
    assert (calib.n_windows, calib.window_len, calib.split) == (3, 16, "validation")
    decoded = [tokenizer.decode(row) for row in calib.tokens]
    valid = (data_dir / "wikitext2_raw" / "wiki.valid.raw").read_text()
    assert all(piece.replace("\n", "") in valid.replace("\n", "") for piece in decoded)
    again = calibration_windows(tokenizer, "wikitext2", n_windows=3, window_len=16, seed=1, explicit_dir=data_dir)
    assert torch.equal(calib.tokens, again.tokens)


def test_sampler_refuses_more_windows_than_the_text_offers_without_allocating_them():
    tokens = torch.arange(1000)
    assert sample_windows(tokens, 1000 - 64 + 1, 64, seed=0).shape == (937, 64)  # every offset: still allowed
    with pytest.raises(UsageError, match="100000000 calibration windows .* at most 937 distinct windows"):
        sample_windows(tokens, 100_000_000, 64, seed=0)


def test_sampler_refuses_windows_that_cannot_fit_in_memory(monkeypatch):
    monkeypatch.setattr(windows_module, "_physical_memory_bytes", lambda: 2**30)
    with pytest.raises(UsageError, match=r"need 0\.5 GiB .* 1\.0 GiB"):
        sample_windows(torch.arange(200_000), 131_072, 512, seed=0)  # 131072 x 512 x 8 bytes = 0.5 GiB > 1/4


def test_calibration_request_checked_on_the_raw_text_before_tokenising():
    check_calibration_request(10, 8, "x" * 17)  # at most 18 tokens: 12 offsets with BOS
    with pytest.raises(UsageError, match="at most 12 distinct windows"):
        check_calibration_request(13, 8, "x" * 17)
    with pytest.raises(DataFormatError, match="fewer than one window of 64"):
        check_calibration_request(1, 64, "short")


def test_window_longer_than_the_context_is_refused():
    check_window_len(512, 512)
    check_window_len(4096, None)  # a model that does not say: left to the model
    with pytest.raises(UsageError, match="--calib-len 513 is longer than the model's context of 512 tokens"):
        check_window_len(513, 512)
