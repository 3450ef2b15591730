"""``ngc compress MODEL``: calibrate, fit, report the accounting, and save a checkpoint folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ngc.arch import ROLES
from ngc.cli.eval_cmd import _check_json_target
from ngc.cli.options import CacheDir, DataDir, Device, claim_output, input_paths, releases_claims
from ngc.fit.methods import METHODS
from ngc.topology.groups import topology_names


@releases_claims
def compress_command(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Packaged alias, model folder, .gguf file or hub id.")],
    method: Annotated[str, typer.Option(metavar="METHOD", help=f"One of: {', '.join(METHODS)}.")] = "svd-llm",
    ratio: Annotated[
        float, typer.Option(metavar="R", help="Fraction of decoder linear weights to remove, in (0, 1).")
    ] = 0.3,
    out: Annotated[Path | None, typer.Option(metavar="DIR", help="Checkpoint folder to write.")] = None,
    roles: Annotated[
        str, typer.Option(metavar="ROLES", help=f"Comma-separated roles to compress (default all: {','.join(ROLES)}).")
    ] = ",".join(ROLES),
    topology: Annotated[
        str | None,
        typer.Option(
            metavar="T",
            help=f"Grouping for --method ngc: {topology_names()}; or rules such as "
            "'q,k,v=intra; gate,up@0-9=cross-2' (unmatched blocks stay per-matrix); or a YAML file of groups.",
        ),
    ] = None,
    alloc: Annotated[
        str | None,
        typer.Option(
            metavar="uniform|auto|auto-energy",
            help="Rank allocation: every group keeps 1-R of its weights (uniform), or ranks go where the "
            "normalised loss (auto) or the output error energy (auto-energy) falls most per parameter, same "
            "total. Default: the method's own.",
        ),
    ] = None,
    sequential: Annotated[
        bool | None,
        typer.Option(
            "--sequential/--no-sequential",
            help="Fit each layer on what the already-compressed layers feed it, with the dense outputs as target "
            "(whitening methods: svd-llm, basis-sharing, ngc). Default: the method's own.",
            show_default=False,
        ),
    ] = None,
    exact: Annotated[
        bool,
        typer.Option(
            "--exact/--no-exact",
            help="Refine groups whose members read different inputs (cross-layer) by alternating closed-form "
            "solves on the exact per-member objective.",
        ),
    ] = False,
    refine: Annotated[
        str,
        typer.Option(
            metavar="none|local|distill",
            help="Refinement after the closed form (SPEC §5): per-group output MSE (local), or KL to the dense "
            "model on the calibration windows (distill). The parameter count never changes.",
        ),
    ] = "none",
    refine_steps: Annotated[
        int, typer.Option(metavar="K", help="Refinement steps (0 = default: local 50 per group, distill 100).")
    ] = 0,
    refine_lr: Annotated[
        float, typer.Option(metavar="LR", help="Relative step size of refinement (fraction of a factor's mean |x|).")
    ] = 1e-3,
    rank_multiple: Annotated[
        int,
        typer.Option(
            metavar="M",
            help="Round every rank down to a multiple of M (64 or 128 for GPU kernels; on an H100, unaligned ranks "
            "made a 7B-shaped prefill 3x slower). Removes slightly more than --ratio.",
        ),
    ] = 1,
    calib: Annotated[
        str, typer.Option(metavar="NAME|FILE", help="Calibration corpus (train split, else validation) or text file.")
    ] = "wikitext2",
    calib_samples: Annotated[int, typer.Option(metavar="N", help="Number of calibration windows.")] = 32,
    calib_len: Annotated[int, typer.Option(metavar="L", help="Tokens per calibration window.")] = 512,
    seed: Annotated[int, typer.Option(metavar="S", help="Seed of the window sampler.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out folder.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the groups, ranks and accounting plan; load no data, fit nothing.")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", metavar="OUT", help="Also write the result (accounting, groups) as JSON.")
    ] = None,
    dtype: Annotated[
        str, typer.Option(metavar="DTYPE", help="Dtype to load and compress in: float32, bfloat16 or float16.")
    ] = "float32",
    save_dtype: Annotated[
        str | None, typer.Option(metavar="DTYPE", help="Dtype of the saved weights (default: --dtype).")
    ] = None,
    device: Device = "cpu",
    data_dir: DataDir = None,
    cache: CacheDir = None,
) -> None:
    """Compress MODEL: remove a fraction R of its decoder linear weights (SPEC §3, §4, §6).

    Calibration statistics are streamed layer by layer from N x L seeded windows; every method sees the same
    windows, blocks and budget. The folder written by --out loads with `ngc eval DIR`.

    Examples:

    \b
      ngc compress smollm2-135m --method svd-llm --ratio 0.3 --out smol-svdllm-30
      ngc compress smollm2-135m --method basis-sharing --ratio 0.2 --calib-samples 64 --out smol-bs-20
      ngc compress smollm2-135m --method ngc --topology intra --ratio 0.3 --dry-run
      ngc compress smollm2-135m --method ngc --topology intra --alloc auto --sequential --ratio 0.3 --out smol-ngc
    """
    from ngc.api import compress, plan
    from ngc.atomic import write_json_atomic
    from ngc.checkpoint.load import load_any as load
    from ngc.checkpoint.manifest import base_identity, is_checkpoint
    from ngc.checkpoint.save import check_target, save_checkpoint
    from ngc.config import CalibConfig, CompressionConfig
    from ngc.data.windows import (
        CalibrationWindows,
        calibration_text,
        check_calibration_request,
        check_window_len,
        sample_windows,
        tokenize_text,
    )
    from ngc.errors import UsageError
    from ngc.fit.methods import get_method
    from ngc.models.load import parse_dtype
    from ngc.reports.tables import accounting_table, groups_table, stdout_console
    from ngc.topology.blocks import parse_roles

    # Everything that needs no model is checked first: flags, output paths, calibration data.
    config = CompressionConfig(
        method=method,
        ratio=ratio,
        roles=parse_roles(roles),
        topology=topology,
        alloc=alloc,
        sequential=sequential,
        exact=exact,
        refine=refine,
        refine_steps=refine_steps,
        refine_lr=refine_lr,
        rank_multiple=rank_multiple,
    )
    calib_config = CalibConfig(calib, calib_samples, calib_len, seed)
    parse_dtype(dtype)
    stored_dtype = parse_dtype(save_dtype) if save_dtype else None
    _check_json_target(json_out)
    if out is None and not dry_run:
        raise UsageError("no --out folder given", hint="add --out DIR (or --dry-run to only see the plan)")
    if out is not None:
        claim_output(out)
        check_target(out, force, inputs=input_paths(model))
    if Path(model).expanduser().is_dir() and is_checkpoint(Path(model).expanduser()):
        raise UsageError(f"{model} is already a compressed checkpoint", hint="compress the original dense model")
    needs_data = get_method(method).needs_moments or get_method(method).needs_fisher
    text = calibration_text(calib_config.source, data_dir) if needs_data and not dry_run else None
    if text is not None:
        check_calibration_request(calib_config.n_windows, calib_config.window_len, text.text)

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    console = Console(stderr=True)
    with console.status(f"loading {model} ..."):
        loaded = load(model, dtype=dtype, device=device, cache=cache)
    console.print(f"loaded {model} ({loaded.spec.family}, {loaded.dtype}) in {loaded.load_seconds:.1f} s")
    if text is not None:
        check_window_len(calib_config.window_len, loaded.context_len)
    method_spec, _members, groups, ranks = plan(loaded.model, config)
    if dry_run:
        from ngc.accounting import GroupRank

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
        stdout_console().print(groups_table(planned, title=f"plan: {method} at R = {ratio} on {model}"))
        if config.alloc != "uniform":
            console.print("ranks shown are uniform; auto allocation moves them after calibration, same total")
        console.print(
            f"{len(groups)} groups; compressed blocks keep {kept:,} of {dense:,} weights "
            f"({1 - kept / dense:.4f} removed)"
        )
        return

    calibration = None
    if text is not None:
        tokens = tokenize_text(loaded.tokenizer, text.text)
        windows = sample_windows(tokens, calib_config.n_windows, calib_config.window_len, seed, loaded.bos_token_id)
        calibration = CalibrationWindows(windows, text.name, text.split, seed)
    with console.status("hashing the dense weights ..."):
        base = base_identity(loaded.model, model)
    result = compress(loaded.model, config, calibration)
    console.print(f"calibration {result.calibration_seconds:.1f} s, fitting {result.fit_seconds:.1f} s")
    stdout_console().print(accounting_table(result.accounting, title=f"{method} at R = {ratio} on {model}"))
    assert out is not None
    save_checkpoint(
        loaded.model,
        loaded.tokenizer,
        out,
        result,
        base | {"folder": str(loaded.folder) if loaded.folder else None},
        dtype=stored_dtype,
        force=force,
    )
    console.print(f"wrote {out}")
    if json_out is not None:
        write_json_atomic(json_out, result.to_dict() | {"out": str(out)})
        console.print(f"wrote {json_out}")
