"""``ngc bench MODEL``: prefill and decode speed and peak memory next to a reference model (SPEC §7)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ngc.cli.options import CacheDir, Device, JsonOut
from ngc.errors import UsageError

if TYPE_CHECKING:
    from ngc.models.load import LoadedModel


def _checkpoint(model: str) -> Path | None:
    from ngc.checkpoint.manifest import is_checkpoint

    path = Path(model).expanduser()
    return path.resolve() if path.is_dir() and is_checkpoint(path) else None


def base_record(model: str) -> dict[str, Any]:
    """What a checkpoint's ``ngc.json`` records of its base model; plain models have none (they need --reference)."""
    from ngc.checkpoint.manifest import read_manifest

    checkpoint = _checkpoint(model)
    if checkpoint is None:
        raise UsageError(
            f"{model} is not an ngc checkpoint, so there is no base model to compare with",
            hint="name one: --reference smollm2-135m (or any MODEL)",
        )
    record = read_manifest(checkpoint).get("base_model")
    return record if isinstance(record, dict) else {}


def base_candidates(checkpoint: Path, record: dict[str, Any]) -> list[str]:
    """Where a checkpoint's base model may be, most specific first, never relative to the current directory:
    the recorded folder if absolute, a packaged alias or hub id as recorded, then the recorded name and folder
    read relative to the folder holding the checkpoint and to the checkpoint itself."""
    from ngc.models.packaged import PACKAGED

    candidates: list[str] = []
    texts = [str(v) for v in (record.get("folder"), record.get("name")) if isinstance(v, str) and v]
    for text in texts:
        path = Path(text).expanduser()
        if path.is_absolute():
            candidates.append(str(path))
        elif text in PACKAGED or (text.count("/") == 1 and not text.startswith(".") and not path.exists()):
            candidates.append(text)  # an alias or a hub id: the same wherever the command runs
    for text in texts:
        if not Path(text).expanduser().is_absolute():
            candidates += [str(checkpoint.parent / text), str(checkpoint / text)]
    return list(dict.fromkeys(candidates))


def weights_digests(model: Any) -> set[str]:
    """The base-model hashes ngc has recorded: the whole-state-dict SHA-256 and the per-tensor (streamed) one."""
    from ngc.checkpoint.manifest import weights_sha256
    from ngc.pipeline.source import WeightsDigest

    return {weights_sha256(model), WeightsDigest.of_model(model)}


def matches_base(loaded: LoadedModel, name: str, recorded: str, cache: Path | None) -> bool:
    """Whether ``loaded`` has the recorded weights, in its own dtype or in float32 (the compress default; older
    checkpoints do not record the dtype the hash was taken in)."""
    from ngc.checkpoint.load import load_any

    if recorded in weights_digests(loaded.model):
        return True
    if loaded.dtype == "float32":
        return False
    return recorded in weights_digests(load_any(name, dtype="float32", device="cpu", cache=cache).model)


def find_base(model: str, *, dtype: str, device: str, cache: Path | None) -> tuple[str, LoadedModel, str]:
    """Load a checkpoint's base model, found by :func:`base_candidates` and identified by its recorded hash.

    Returns (where it was found, the loaded model, ``"matches"`` or ``"unchecked"`` for a record without a hash).
    """
    from ngc.checkpoint.load import load_any

    checkpoint = _checkpoint(model)
    record = base_record(model)
    assert checkpoint is not None  # base_record refused plain models
    recorded = record.get("weights_sha256")
    tried: list[str] = []
    for candidate in base_candidates(checkpoint, record):
        path = Path(candidate)
        if path.is_absolute() and not path.exists():
            tried.append(f"{candidate} (missing)")
            continue
        try:
            loaded = load_any(candidate, dtype=dtype, device=device, cache=cache)
        except Exception as exc:  # a candidate that does not load is just not the base model
            tried.append(f"{candidate} ({type(exc).__name__})")
            continue
        if not isinstance(recorded, str):
            return candidate, loaded, "unchecked"
        if matches_base(loaded, candidate, recorded, cache):
            return candidate, loaded, "matches"
        tried.append(f"{candidate} (other weights)")
    raise UsageError(
        f"the base model of {model} (recorded as {record.get('name')!r}, weights sha256 "
        f"{str(recorded)[:16]}...) was not found: tried {', '.join(tried) or 'nothing'}",
        hint="name it: --reference MODEL",
    )


def bench_command(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="An ngc checkpoint folder, or any MODEL.")],
    reference: Annotated[
        str | None,
        typer.Option(metavar="MODEL", help="What to compare with (default: the checkpoint's base model)."),
    ] = None,
    shapes: Annotated[
        str, typer.Option(metavar="BxL,...", help="Prefill shapes, batch x length.")
    ] = "1x128,1x512,4x512",
    decode: Annotated[
        str, typer.Option(metavar="BxP+N", help="Decode: batch x prompt, then N greedy steps with the KV cache.")
    ] = "1x128+64",
    no_decode: Annotated[bool, typer.Option("--no-decode", help="Skip the decode measurement.")] = False,
    compile_models: Annotated[
        bool,
        typer.Option(
            "--compile/--eager",
            help="Compile both models alike (one graph, inductor with freezing, CUDA graphs on CUDA; decode on a "
            "static KV cache) and report compile time apart; falls back to eager, with a warning, if that fails.",
        ),
    ] = False,
    warmup: Annotated[int, typer.Option(metavar="K", help="Untimed runs of each measurement first.")] = 1,
    repeats: Annotated[int, typer.Option(metavar="K", help="Timed runs; the median is reported.")] = 3,
    threads: Annotated[
        int | None, typer.Option(metavar="N", help="CPU threads for both models (default: torch's choice).")
    ] = None,
    memory: Annotated[
        bool,
        typer.Option(
            "--memory/--no-memory",
            help="Peak memory at the largest prefill shape: CUDA peak allocation, or on CPU the peak RSS of a "
            "fresh process per model.",
        ),
    ] = True,
    dtype: Annotated[
        str, typer.Option(metavar="DTYPE", help="float32, bfloat16 or float16 (both models).")
    ] = "float32",
    device: Device = "cpu",
    json_out: JsonOut = None,
    cache: CacheDir = None,
) -> None:
    """Speed of MODEL and a reference in the same run: prefill and decode tokens/s, speed-up, and its limit.

    The limit of the prefill speed-up is dense MACs / compressed MACs per token; of decode, dense stored bytes /
    compressed stored bytes. Both models use the same dtype, device and threads; runs alternate between them.
    A checkpoint's base model is found from its record (not from the current directory) and identified by its
    weights hash.

    Examples:

    \b
      ngc bench ./ngc-demo
      ngc bench ./ngc-demo --shapes 4x512 --repeats 5 --threads 2 --json bench.json
      ngc bench ./my-model --reference smollm2-135m --no-decode
      ngc bench ./ngc-demo --compile --threads 1
    """
    import torch
    from rich.console import Console

    from ngc.atomic import write_json_atomic
    from ngc.checkpoint.load import load_any
    from ngc.eval import speed
    from ngc.eval.memory_probe import probe
    from ngc.models.load import parse_dtype
    from ngc.reports.results import bench_payload
    from ngc.reports.tables import speed_table, stdout_console

    prefill_shapes = speed.parse_shapes(shapes)
    decode_shape = None if no_decode else speed.parse_decode(decode)
    parse_dtype(dtype, "--dtype")
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads {threads} must be at least 1", hint="e.g. --threads 2")
        torch.set_num_threads(threads)
    console = Console(stderr=True)
    with console.status(f"loading {model} and its reference ..."):
        mine = load_any(model, dtype=dtype, device=device, cache=cache)
        if reference is None:
            reference, theirs, identity = find_base(model, dtype=dtype, device=device, cache=cache)
        else:
            theirs = load_any(reference, dtype=dtype, device=device, cache=cache)
            identity = _given_identity(model, theirs, reference, cache)
    if identity == "differs":
        console.print(f"warning: {reference} is not the base model recorded in {model} (other weights)")
    result = speed.benchmark(
        mine.model,
        theirs.model,
        prefill_shapes,
        decode_shape,
        warmup=warmup,
        repeats=repeats,
        compile=compile_models,
        progress=lambda step: console.print(f"measuring {step} ..."),
    )
    if result.compile_error is not None:
        console.print(f"warning: torch.compile failed ({result.compile_error}); the figures are eager")
    largest = max(prefill_shapes, key=lambda s: s.batch * s.length)
    peak: dict[str, object] = {}
    if memory:
        with console.status(f"peak memory at prefill {largest} ..."):
            if device.startswith("cuda"):
                peak = {
                    "model": speed.cuda_peak_bytes(mine.model, largest),
                    "reference": speed.cuda_peak_bytes(theirs.model, largest),
                    "method": f"CUDA: the model's own weights and buffers plus its peak allocation above the "
                    f"memory in use before one eager prefill of {largest} (the other resident model left out)",
                }
            else:
                peak = {
                    "model": probe(model, dtype, largest.batch, largest.length, cache),
                    "reference": probe(reference, dtype, largest.batch, largest.length, cache),
                    "baseline": probe("-", dtype, 1, 1, cache),
                    "method": f"peak RSS during one prefill of {largest} in a fresh process that loaded the model "
                    "(loading's own peak left out); baseline: the same process loading nothing",
                }
    title = f"{model} vs {reference} ({result.device}, {result.dtype}, {result.mode})"
    stdout_console().print(speed_table(result, title=title))
    if result.compile_seconds:
        seconds = result.compile_seconds
        console.print(
            f"compile (first calls, compilation included): {seconds['model']:.1f} s vs {seconds['reference']:.1f} s"
        )
    console.print(_alignment_line(result.rank_alignment))
    if peak:
        ratio = peak["model"] / peak["reference"]  # type: ignore[operator]
        console.print(f"peak memory: {peak['model']:,} vs {peak['reference']:,} bytes (x{ratio:.3f})")
    if json_out is not None:
        extra = {
            "mode": result.mode,
            "compile_seconds": result.compile_seconds or None,
            "compile_error": result.compile_error,
            "rank_alignment": result.rank_alignment,
            "reference_identity": identity,
        }
        write_json_atomic(json_out, bench_payload(model, reference, result, peak) | extra)
        console.print(f"wrote {json_out}")


def _given_identity(model: str, reference: LoadedModel, name: str, cache: Path | None) -> str:
    """``"matches"``/``"differs"``: a --reference against the checkpoint's recorded base; ``"no record"``."""
    if _checkpoint(model) is None:
        return "no record"
    recorded = base_record(model).get("weights_sha256")
    if not isinstance(recorded, str):
        return "no record"
    return "matches" if matches_base(reference, name, recorded, cache) else "differs"


def _alignment_line(alignment: int | None) -> str:
    if alignment is None:
        return "ranks: no factorised modules"
    state = "aligned" if alignment >= 8 else "not aligned"
    hint = "tensor cores want multiples of 8; ngc compress --rank-multiple sets it"
    return f"ranks: every rank a multiple of {alignment} ({state}; {hint})"
