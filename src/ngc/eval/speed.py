"""Speed and memory of a model next to a reference, measured the same way in the same process (SPEC §7).

- prefill: tokens per second of one forward over ``batch x len`` random tokens, no KV cache;
- decode: tokens per second of greedy steps with the KV cache, after a prefill of ``prompt`` tokens (only the
  steps are timed);
- each figure is the median of ``repeats`` timed runs after ``warmup`` untimed ones; the model and the reference
  alternate run by run, so drift in the machine's speed hits both alike;
- the limits: prefill can gain at most the inverse of the MAC ratio (decoder linears and the LM head, from
  :func:`ngc.accounting.account`), decode, which reads every weight per step, at most the ratio of stored bytes.
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ngc.accounting import account
from ngc.errors import UsageError


@dataclass(frozen=True)
class Shape:
    batch: int
    length: int

    def __str__(self) -> str:
        return f"{self.batch}x{self.length}"


@dataclass(frozen=True)
class DecodeShape:
    batch: int
    prompt: int
    new_tokens: int

    def __str__(self) -> str:
        return f"{self.batch}x{self.prompt}+{self.new_tokens}"


def parse_shapes(text: str) -> list[Shape]:
    """``"1x128,4x512"`` -> shapes."""
    shapes = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            batch, length = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise UsageError(f"bad prefill shape {part!r}", hint="write BATCHxLEN, e.g. --shapes 1x128,4x512") from None
        if batch < 1 or length < 1:
            raise UsageError(f"prefill shape {part!r} must be positive", hint="e.g. --shapes 1x128,4x512")
        shapes.append(Shape(batch, length))
    if not shapes:
        raise UsageError("no prefill shape given", hint="e.g. --shapes 1x128,4x512")
    return shapes


def parse_decode(text: str) -> DecodeShape:
    """``"1x128+64"`` -> batch 1, prompt 128, 64 new tokens."""
    try:
        head, new = text.lower().split("+")
        batch, prompt = (int(v) for v in head.split("x"))
        shape = DecodeShape(batch, prompt, int(new))
    except ValueError:
        raise UsageError(f"bad decode shape {text!r}", hint="write BATCHxPROMPT+NEW, e.g. --decode 1x128+64") from None
    if min(shape.batch, shape.prompt, shape.new_tokens) < 1:
        raise UsageError(f"decode shape {text!r} must be positive", hint="e.g. --decode 1x128+64")
    return shape


@dataclass(frozen=True)
class SpeedRow:
    batch: int
    len: int  # prefill: tokens per sequence; decode: new tokens per sequence
    tokens_per_s: float
    reference_tokens_per_s: float
    speedup: float
    limit: float
    prompt: int | None = None  # decode only

    def to_dict(self) -> dict:
        data = asdict(self)
        if self.prompt is None:
            data.pop("prompt")
        return data


@dataclass(frozen=True)
class BenchResult:
    prefill: list[SpeedRow]
    decode: SpeedRow | None
    mac_ratio: float
    bytes_ratio: float  # stored bytes, model over reference
    threads: int
    device: str
    dtype: str
    warmup: int
    repeats: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def random_ids(vocab: int, batch: int, length: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=generator).to(device)


@torch.no_grad()
def prefill_once(model: nn.Module, ids: torch.Tensor) -> float:
    """Seconds of one forward over ``ids`` without a KV cache."""
    device = ids.device
    _sync(device)
    start = time.perf_counter()
    model(input_ids=ids, use_cache=False)
    _sync(device)
    return time.perf_counter() - start


def _cache_argument(model: nn.Module) -> str:
    """The forward argument that takes the KV cache: ``cache`` in current transformers, else the older name."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def decode_once(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> float:
    """Seconds of ``new_tokens`` greedy steps with the KV cache, after an untimed prefill of ``ids``."""
    from transformers import DynamicCache

    device = ids.device
    cache = {_cache_argument(model): DynamicCache(config=model.config)}  # filled in place by every forward
    token = model(input_ids=ids, use_cache=True, **cache).logits[:, -1:].argmax(-1)
    _sync(device)
    start = time.perf_counter()
    for _ in range(new_tokens):
        token = model(input_ids=token, use_cache=True, **cache).logits[:, -1:].argmax(-1)
    _sync(device)
    return time.perf_counter() - start


def paired_medians(
    run_model: Callable[[], float], run_reference: Callable[[], float], warmup: int, repeats: int
) -> tuple[float, float]:
    """Median seconds of each, measured alternately after ``warmup`` untimed runs of each."""
    for _ in range(warmup):
        run_model()
        run_reference()
    model_times, reference_times = [], []
    for _ in range(repeats):
        model_times.append(run_model())
        reference_times.append(run_reference())
    return statistics.median(model_times), statistics.median(reference_times)


def benchmark(
    model: nn.Module,
    reference: nn.Module,
    shapes: Sequence[Shape],
    decode: DecodeShape | None,
    *,
    warmup: int = 1,
    repeats: int = 3,
    progress: Callable[[str], None] = lambda _: None,
) -> BenchResult:
    """Prefill and decode speed of ``model`` and ``reference`` (same device, dtype and threads)."""
    if repeats < 1 or warmup < 0:
        raise UsageError(f"repeats {repeats} / warmup {warmup}", hint="repeats at least 1, warmup at least 0")
    device = _device(model)
    if _device(reference) != device:
        raise UsageError("the model and the reference are on different devices", hint="load both with one --device")
    vocab = min(model.config.vocab_size, reference.config.vocab_size)
    mine, theirs = account(model), account(reference)
    mac_ratio = mine.macs_per_token / theirs.macs_per_token
    bytes_ratio = mine.stored_bytes / theirs.stored_bytes
    model.eval(), reference.eval()
    rows = []
    for shape in shapes:
        progress(f"prefill {shape}")
        ids = random_ids(vocab, shape.batch, shape.length, device)
        t_model, t_ref = paired_medians(
            lambda ids=ids: prefill_once(model, ids), lambda ids=ids: prefill_once(reference, ids), warmup, repeats
        )
        tokens = shape.batch * shape.length
        rows.append(
            SpeedRow(shape.batch, shape.length, tokens / t_model, tokens / t_ref, t_ref / t_model, 1 / mac_ratio)
        )
    decode_row = None
    if decode is not None:
        progress(f"decode {decode}")
        ids = random_ids(vocab, decode.batch, decode.prompt, device, seed=1)
        n = decode.new_tokens
        t_model, t_ref = paired_medians(
            lambda: decode_once(model, ids, n), lambda: decode_once(reference, ids, n), warmup, repeats
        )
        tokens = decode.batch * n
        decode_row = SpeedRow(
            decode.batch, n, tokens / t_model, tokens / t_ref, t_ref / t_model, 1 / bytes_ratio, prompt=decode.prompt
        )
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return BenchResult(
        rows, decode_row, mac_ratio, bytes_ratio, torch.get_num_threads(), str(device), dtype, warmup, repeats
    )


def cuda_peak_bytes(model: nn.Module, shape: Shape) -> int:
    """Peak GPU memory allocated while running one prefill of ``shape`` (weights included)."""
    device = _device(model)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    prefill_once(model, random_ids(model.config.vocab_size, shape.batch, shape.length, device))
    return int(torch.cuda.max_memory_allocated(device))
