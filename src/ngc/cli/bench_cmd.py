"""``ngc bench MODEL``: prefill and decode speed and peak memory next to a reference model (SPEC §7)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ngc.cli.options import CacheDir, Device, JsonOut
from ngc.errors import UsageError


def default_reference(model: str) -> str:
    """A checkpoint's base model, as its manifest names it; plain models need --reference."""
    from ngc.checkpoint.manifest import is_checkpoint, read_manifest

    path = Path(model).expanduser()
    if path.is_dir() and is_checkpoint(path):
        return str(read_manifest(path)["base_model"]["name"])
    raise UsageError(
        f"{model} is not an ngc checkpoint, so there is no base model to compare with",
        hint="name one: --reference smollm2-135m (or any MODEL)",
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

    Examples:

    \b
      ngc bench ./ngc-demo
      ngc bench ./ngc-demo --shapes 4x512 --repeats 5 --threads 2 --json bench.json
      ngc bench ./my-model --reference smollm2-135m --no-decode
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
    parse_dtype(dtype)
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads {threads} must be at least 1", hint="e.g. --threads 2")
        torch.set_num_threads(threads)
    reference = reference or default_reference(model)
    console = Console(stderr=True)
    with console.status(f"loading {model} and {reference} ..."):
        mine = load_any(model, dtype=dtype, device=device, cache=cache)
        theirs = load_any(reference, dtype=dtype, device=device, cache=cache)
    result = speed.benchmark(
        mine.model,
        theirs.model,
        prefill_shapes,
        decode_shape,
        warmup=warmup,
        repeats=repeats,
        progress=lambda step: console.print(f"measuring {step} ..."),
    )
    largest = max(prefill_shapes, key=lambda s: s.batch * s.length)
    peak: dict[str, object] = {}
    if memory:
        with console.status(f"peak memory at prefill {largest} ..."):
            if device.startswith("cuda"):
                peak = {
                    "model": speed.cuda_peak_bytes(mine.model, largest),
                    "reference": speed.cuda_peak_bytes(theirs.model, largest),
                    "method": f"CUDA peak allocation during one prefill of {largest}, weights included",
                }
            else:
                peak = {
                    "model": probe(model, dtype, largest.batch, largest.length, cache),
                    "reference": probe(reference, dtype, largest.batch, largest.length, cache),
                    "baseline": probe("-", dtype, 1, 1, cache),
                    "method": f"peak RSS during one prefill of {largest} in a fresh process that loaded the model "
                    "(loading's own peak left out); baseline: the same process loading nothing",
                }
    stdout_console().print(speed_table(result, title=f"{model} vs {reference} ({result.device}, {result.dtype})"))
    if peak:
        ratio = peak["model"] / peak["reference"]  # type: ignore[operator]
        console.print(f"peak memory: {peak['model']:,} vs {peak['reference']:,} bytes (x{ratio:.3f})")
    if json_out is not None:
        write_json_atomic(json_out, bench_payload(model, reference, result, peak))
        console.print(f"wrote {json_out}")
