"""What ``ngc compress`` does once its flags are checked: pick the source, calibrate, compress, save, report.

A local model folder (a packaged alias and a converted GGUF are folders in the cache) is streamed layer by
layer from its safetensors shards straight into the checkpoint, so it never sits whole in memory. What needs the
whole model (FWSVD's Fisher pass, distillation, auto allocation or topology), or a hub id, loads it first; both
run the same layer-sequential pipeline. Under ``torchrun`` / ``accelerate launch`` every rank runs this with
its share of the windows, and rank 0 writes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from ngc.config import CalibConfig, CompressionConfig
from ngc.errors import UsageError
from ngc.modules.int8 import INT8, quantize_factors


@dataclass(frozen=True)
class CompressJob:
    """Everything ``ngc compress`` was asked to do, checked."""

    model: str
    config: CompressionConfig
    calib: CalibConfig
    text: Any  # the calibration text (None when the method needs no data, or for --dry-run)
    refine_text: Any  # the distillation text (None unless --refine distill)
    out: Path | None
    json_out: Path | None
    dtype: str
    save_dtype: str | None  # None: the compute dtype
    device: str
    cache: Path | None
    force: bool
    dry_run: bool
    stream: bool | None  # None: stream whenever the model is a local safetensors folder and the config allows
    batch_size: int
    precision: str | None
    hidden_on: str
    factor_dtype: str = "float"  # "int8": factors quantized after compression (ngc.modules.int8)
    given: frozenset[str] = frozenset()  # config fields the user set (the method's defaults fill the others)

    @property
    def stored_dtype(self) -> torch.dtype | None:
        """The dtype the checkpoint's weights are saved in (None: the compute dtype)."""
        from ngc.models.load import parse_dtype

        return parse_dtype(self.save_dtype, "--save-dtype") if self.save_dtype else None

    def fingerprint(self) -> dict[str, Any]:
        """What every rank must agree on."""
        data = asdict(self) | {"config": self.config.to_dict(), "calib": asdict(self.calib)}
        data["text"] = None if self.text is None else len(self.text.text)
        data["refine_text"] = None if self.refine_text is None else len(self.refine_text.text)
        data["given"] = sorted(self.given)
        return data


HIDDEN_PLACES = ("auto", "device", "host")


def check_pipeline_options(batch_size: int, precision: str | None, hidden_on: str) -> None:
    from ngc.calib.moments import PRECISIONS

    if batch_size < 1:
        raise UsageError(f"--calib-batch {batch_size} must be at least 1", hint="e.g. --calib-batch 8")
    if precision is not None and precision not in PRECISIONS:
        raise UsageError(f"unknown --stats-precision {precision!r}", hint=f"use one of {', '.join(PRECISIONS)}")
    if hidden_on not in HIDDEN_PLACES:
        raise UsageError(f"unknown --hidden-on {hidden_on!r}", hint=f"use one of {', '.join(HIDDEN_PLACES)}")


def run_compression(job: CompressJob) -> None:
    from transformers.utils import logging as hf_logging

    from ngc.cli.compress_source import adapt_defaults, stream_folder
    from ngc.models.load import parse_dtype
    from ngc.pipeline.distributed import init_world, rank_device

    hf_logging.disable_progress_bar()
    world = init_world(job.device)
    device = rank_device(job.device, world)
    world.agree("arguments", job.fingerprint())
    console = Console(stderr=True, quiet=not world.is_main)
    config, notes = adapt_defaults(job.config, job.given, processes=world.size)
    folder, config, streamed_notes = stream_folder(
        job.model, config, job.given, job.stream, dtype=parse_dtype(job.dtype), device=str(device), cache=job.cache
    )
    for note in notes + streamed_notes:
        console.print(f"[yellow]defaults:[/] {note}")
    job = replace(job, config=config)
    if folder is not None:
        _run_streamed(job, folder, device, world, console)
    else:
        _run_in_memory(job, device, world, console)


def _options(job: CompressJob, device: str):
    from ngc.pipeline.run import PipelineOptions

    return PipelineOptions(device=device, batch_size=job.batch_size, precision=job.precision, hidden_on=job.hidden_on)


def _calibration(job: CompressJob, tokenizer: Any, bos: int | None, context: int | None):
    from ngc.data.windows import CalibrationWindows, check_window_len, sample_windows, tokenize_text

    if job.text is None:
        return None
    check_window_len(job.calib.window_len, context)
    tokens = tokenize_text(tokenizer, job.text.text)
    windows = sample_windows(tokens, job.calib.n_windows, job.calib.window_len, job.calib.seed, bos)
    return CalibrationWindows(windows, job.text.name, job.text.split, job.calib.seed)


def _refinement(job: CompressJob, tokenizer: Any, bos: int | None):
    from ngc.data.windows import tokenize_text
    from ngc.refine.data import RefinementData

    if job.refine_text is None:
        return None
    text = job.refine_text
    return RefinementData(tokenize_text(tokenizer, text.text), text.name, text.split, bos)


def _run_streamed(job: CompressJob, folder: Path, device: str, world, console: Console) -> None:
    from transformers import AutoTokenizer

    from ngc.arch import arch_spec
    from ngc.models.load import parse_dtype
    from ngc.pipeline.folder import compress_folder
    from ngc.pipeline.source import skeleton

    model = skeleton(folder, parse_dtype(job.dtype))
    if job.dry_run:
        _print_plan(job, model, console)
        return
    tokenizer = AutoTokenizer.from_pretrained(folder)
    bos = tokenizer.bos_token_id if arch_spec(model).needs_bos else None
    context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    calibration = _calibration(job, tokenizer, bos, context)
    console.print(f"streaming {job.model} layer by layer from {folder} ({arch_spec(model).family}, {job.dtype})")
    assert job.out is not None
    result = compress_folder(
        folder,
        job.out,
        job.config,
        calibration,
        _options(job, device),
        dtype=parse_dtype(job.dtype),
        save_dtype=job.stored_dtype,
        tokenizer=tokenizer,
        force=job.force,
        world=world,
        base_name=job.model,
        factor_dtype=job.factor_dtype,
    )
    _report(job, result, world, console)


def _run_in_memory(job: CompressJob, device: str, world, console: Console) -> None:
    from ngc.api import compress
    from ngc.checkpoint.load import load_any
    from ngc.checkpoint.save import base_record, save_checkpoint

    with console.status(f"loading {job.model} ..."):
        loaded = load_any(job.model, dtype=job.dtype, device=device, cache=job.cache)
    console.print(f"loaded {job.model} ({loaded.spec.family}, {loaded.dtype}) in {loaded.load_seconds:.1f} s")
    if job.dry_run:
        _print_plan(job, loaded.model, console)
        return
    calibration = _calibration(job, loaded.tokenizer, loaded.bos_token_id, loaded.context_len)
    refinement = _refinement(job, loaded.tokenizer, loaded.bos_token_id)
    written = False  # with distillation the closed-form checkpoint is written first; the refined one replaces it

    def save(model, result) -> None:
        nonlocal written
        if world.is_main:
            assert job.out is not None
            base = base_record(model, result) | {
                "name": job.model,
                "folder": str(loaded.folder.resolve()) if loaded.folder else None,
                "weights_dtype": job.dtype,  # the dtype the hash was taken in
            }
            force = job.force or written
            extra = {"distill": result.distill} if result.distill is not None else None  # "pending" until done
            save_checkpoint(
                model, loaded.tokenizer, job.out, result, base, dtype=job.stored_dtype, force=force, extra=extra
            )
            written = True

    def save_closed_form(model, result) -> None:
        save(model, result)
        console.print(f"wrote the closed-form checkpoint {job.out} (replaced once distillation completes)")

    result = compress(
        loaded.model,
        job.config,
        calibration,
        _options(job, device),
        refinement=refinement,
        on_closed_form=save_closed_form if refinement is not None else None,
    )
    if job.factor_dtype == INT8:
        quantize_factors(loaded.model)  # after refinement; redoes result.accounting
    save(loaded.model, result)
    world.barrier()
    _report(job, result, world, console)


def _report(job: CompressJob, result, world, console: Console) -> None:
    from ngc.atomic import write_json_atomic
    from ngc.reports.tables import accounting_table, stdout_console

    if not world.is_main:
        return
    console.print(f"calibration {result.calibration_seconds:.1f} s, fitting {result.fit_seconds:.1f} s")
    title = f"{job.config.method} at R = {job.config.ratio} on {job.model}"
    stdout_console().print(accounting_table(result.accounting, title=title))
    console.print(f"wrote {job.out}")
    if job.json_out is not None:
        write_json_atomic(job.json_out, result.to_dict() | {"out": str(job.out)})
        console.print(f"wrote {job.json_out}")


def _print_plan(job: CompressJob, model, console: Console) -> None:
    from ngc.accounting import GroupRank
    from ngc.api import plan
    from ngc.reports.tables import groups_table, stdout_console

    _method, _members, groups, ranks = plan(model, job.config)
    planned = [
        GroupRank(
            g.id,
            ranks[g.id],
            g.n,
            tuple(f"{m.module}:{m.role}" for m in g.members),
            g.dense_params,
            g.params_at_rank(ranks[g.id]),
        )
        for g in groups
    ]
    kept = sum(g.kept_params for g in planned)
    dense = sum(g.dense_params for g in planned)
    title = f"plan: {job.config.method} at R = {job.config.ratio} on {job.model}"
    stdout_console().print(groups_table(planned, title=title))
    if job.config.alloc != "uniform":
        console.print("ranks shown are uniform; auto allocation moves them after calibration, same total")
    console.print(
        f"{len(groups)} groups; compressed blocks keep {kept:,} of {dense:,} weights ({1 - kept / dense:.4f} removed)"
    )
