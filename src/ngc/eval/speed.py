"""Speed and memory of a model next to a reference, measured the same way in the same process (SPEC §7).

- prefill: tokens per second of one forward over ``batch x len`` random tokens, no KV cache;
- decode: tokens per second of greedy steps with the KV cache, after a prefill of ``prompt`` tokens (only the
  steps are timed);
- each figure is the median of ``repeats`` timed runs after ``warmup`` untimed ones; the model and the reference
  alternate run by run, so drift in the machine's speed hits both alike;
- the limits: prefill can gain at most the inverse of the MAC ratio (decoder linears and the LM head, from
  :func:`ngc.accounting.account`), decode, which reads every weight per step, at most the ratio of stored bytes;
- compiled (``compile=True``): both models through the same :func:`compile_model` (one graph, inductor with
  freezing, CUDA graphs on CUDA); decode runs its steps compiled on a static KV cache after an eager prefill into
  it. The first call of every measurement compiles; its wall time is reported apart (``compile_seconds``) and is
  not among the timed runs. If compiling fails, both models are measured eagerly, the result says so
  (``compiled=False``, ``compile_error``) and one warning line names the cause.
"""

from __future__ import annotations

import inspect
import math
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ngc.accounting import account
from ngc.errors import UsageError
from ngc.modules.factorized import GroupBasis


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
    compiled: bool = False  # True only if both models ran compiled
    compile_seconds: dict[str, float] = field(default_factory=dict)  # first calls, compilation included
    compile_error: str | None = None  # why a requested compile fell back to eager
    rank_alignment: int | None = None  # largest power of two (up to 128) dividing every rank; None: no factors

    @property
    def mode(self) -> str:
        return "compiled" if self.compiled else "eager"


def rank_alignment(model: nn.Module) -> int | None:
    """The largest power of two, up to 128, that divides the rank of every shared basis (None without any)."""
    ranks = {basis.rank for basis in model.modules() if isinstance(basis, GroupBasis)}
    if not ranks:
        return None
    common = math.gcd(*ranks)
    return min(common & -common, 128) if common else 128


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def random_ids(vocab: int, batch: int, length: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=generator).to(device)


@torch.no_grad()
def prefill_once(model: Callable[..., object], ids: torch.Tensor) -> float:
    """Seconds of one forward of ``model`` (a module or its compiled forward) over ``ids`` without a KV cache."""
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


@torch.no_grad()
def static_decode_once(model: nn.Module, step: Callable[..., object], ids: torch.Tensor, new_tokens: int) -> float:
    """Seconds of ``new_tokens`` greedy steps of ``step`` (``model`` compiled) on a static KV cache, after an
    untimed eager prefill of ``ids`` into it."""
    from transformers import StaticCache

    device = ids.device
    cache = {_cache_argument(model): StaticCache(config=model.config, max_cache_len=ids.shape[1] + new_tokens)}
    token = model(input_ids=ids, use_cache=True, **cache).logits[:, -1:].argmax(-1)
    graphs = device.type == "cuda"
    _sync(device)
    start = time.perf_counter()
    for _ in range(new_tokens):
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs may be overwritten
        token = step(input_ids=token, use_cache=True, **cache).logits[:, -1:].argmax(-1)
    _sync(device)
    return time.perf_counter() - start


def compile_options(device: torch.device) -> dict[str, object]:
    """Inductor options of :func:`compile_model`: freezing (weights as constants, which lets inductor merge the
    identical ``x @ B`` of the members of a basis), plus CUDA graphs on CUDA (what ``mode="reduce-overhead"``
    sets; torch.compile takes a mode or options, not both)."""
    import torch._inductor

    options: dict[str, object] = {"freezing": True}
    if device.type == "cuda":
        options |= torch._inductor.list_mode_options("reduce-overhead")
    return options


def compile_model(model: nn.Module) -> Callable[..., object]:
    """``model``'s forward compiled as one graph with static shapes (a shape met later compiles again)."""
    return torch.compile(model, fullgraph=True, dynamic=False, options=compile_options(_device(model)))


@dataclass
class Runner:
    """How one model is measured: eagerly, or through its compiled forward ``step``."""

    model: nn.Module
    step: Callable[..., object] | None = None

    def prefill(self, ids: torch.Tensor) -> float:
        return prefill_once(self.model if self.step is None else self.step, ids)

    def decode(self, ids: torch.Tensor, new_tokens: int) -> float:
        if self.step is None:
            return decode_once(self.model, ids, new_tokens)
        return static_decode_once(self.model, self.step, ids, new_tokens)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def compile_runners(
    model: nn.Module,
    reference: nn.Module,
    calls: Sequence[Callable[[Runner], float]],
    compiler: Callable[[nn.Module], Callable[..., object]] | None = None,
) -> tuple[Runner, Runner, dict[str, float], str | None]:
    """Compile both models and make every call of ``calls`` once on each (where compilation happens).

    ``compiler`` defaults to :func:`compile_model`. Returns the runners, the seconds those first calls took, and
    ``None``; or, if anything failed, eager runners, no seconds and the cause (after one warning line).
    """
    compiler = compiler or compile_model
    try:
        runners = Runner(model, compiler(model)), Runner(reference, compiler(reference))
        seconds = {"model": 0.0, "reference": 0.0}
        for call in calls:
            for key, runner in zip(("model", "reference"), runners, strict=True):
                start = time.perf_counter()
                call(runner)
                seconds[key] += time.perf_counter() - start
    except Exception as exc:  # any compiler failure: the eager numbers are still worth having
        torch._dynamo.reset()
        cause = _first_line(exc)
        warnings.warn(f"torch.compile failed ({cause}); measuring both models eagerly", RuntimeWarning, stacklevel=2)
        return Runner(model), Runner(reference), {}, cause
    return *runners, seconds, None


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
    compile: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> BenchResult:
    """Prefill and decode speed of ``model`` and ``reference`` (same device, dtype and threads), eager or both
    compiled alike (``compile``)."""
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
    prefill_ids = [random_ids(vocab, shape.batch, shape.length, device) for shape in shapes]
    decode_ids = None if decode is None else random_ids(vocab, decode.batch, decode.prompt, device, seed=1)
    ours, ref, compile_seconds, compile_error = Runner(model), Runner(reference), {}, None
    if compile:
        progress("compiling both models")
        calls: list[Callable[[Runner], float]] = [lambda r, ids=ids: r.prefill(ids) for ids in prefill_ids]
        if decode is not None:
            calls.append(lambda r: r.decode(decode_ids, decode.new_tokens))
        ours, ref, compile_seconds, compile_error = compile_runners(model, reference, calls)
    rows = []
    for shape, ids in zip(shapes, prefill_ids, strict=True):
        progress(f"prefill {shape}")
        t_model, t_ref = paired_medians(
            lambda ids=ids: ours.prefill(ids), lambda ids=ids: ref.prefill(ids), warmup, repeats
        )
        tokens = shape.batch * shape.length
        rows.append(
            SpeedRow(shape.batch, shape.length, tokens / t_model, tokens / t_ref, t_ref / t_model, 1 / mac_ratio)
        )
    decode_row = None
    if decode is not None:
        progress(f"decode {decode}")
        n = decode.new_tokens
        t_model, t_ref = paired_medians(
            lambda: ours.decode(decode_ids, n), lambda: ref.decode(decode_ids, n), warmup, repeats
        )
        tokens = decode.batch * n
        decode_row = SpeedRow(
            decode.batch, n, tokens / t_model, tokens / t_ref, t_ref / t_model, 1 / bytes_ratio, prompt=decode.prompt
        )
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return BenchResult(
        rows,
        decode_row,
        mac_ratio,
        bytes_ratio,
        torch.get_num_threads(),
        str(device),
        dtype,
        warmup,
        repeats,
        compiled=ours.step is not None,
        compile_seconds=compile_seconds,
        compile_error=compile_error,
        rank_alignment=rank_alignment(model),
    )


def resident_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s own parameters and buffers (each tensor once)."""
    tensors = {t.data_ptr(): t for t in (*model.parameters(), *model.buffers()) if t.numel()}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def cuda_peak_bytes(model: nn.Module, shape: Shape) -> int:
    """Peak GPU memory of one prefill of ``shape`` counting ``model`` alone: its weights and buffers plus the
    peak allocation above what was in use before (so another model resident on the device is left out)."""
    device = _device(model)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    prefill_once(model, random_ids(model.config.vocab_size, shape.batch, shape.length, device))
    return resident_bytes(model) + int(torch.cuda.max_memory_allocated(device)) - before
