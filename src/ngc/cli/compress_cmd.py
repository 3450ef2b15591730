"""``ngc compress MODEL``: calibrate, fit, report the accounting, and save a checkpoint folder."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ngc.arch import ROLES
from ngc.cli.eval_cmd import _check_json_target
from ngc.cli.options import CacheDir, DataDir, Device, claim_output, input_paths, releases_claims
from ngc.fit.methods import METHODS
from ngc.topology.groups import topology_names

if TYPE_CHECKING:
    from ngc.cli.compress_run import CompressJob


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
            metavar="uniform|auto|auto-energy|v2|zero-sum|loss",
            help="Rank allocation: every group keeps 1-R of its weights (uniform), or ranks go where the "
            "normalised loss (auto) or the output error energy (auto-energy) falls most per parameter, same "
            "total; v2: SVD-LLM V2's per-role ratios from 1/log of each group's output error; zero-sum: ZS-SVD's "
            "global choice of whitened components by their first-order loss change (matrices past break-even stay "
            "dense); loss: the same rule with components ranked by loss change per parameter saved. Default: the "
            "method's own (ngc: loss when the model is loaded whole, with --alloc-floor 0.5 from R = 0.5; uniform "
            "when streamed).",
        ),
    ] = None,
    alloc_floor: Annotated[
        float | None,
        typer.Option(
            metavar="F",
            help="With --alloc auto, zero-sum or loss: every group (zero-sum, loss: every matrix) keeps at least this "
            "fraction of its uniform rank (0 = no floor, 1 = uniform ranks). Default: the method's own (ngc: 0.5 "
            "from R = 0.5, else 0).",
            show_default=False,
        ),
    ] = None,
    sequential: Annotated[
        bool | None,
        typer.Option(
            "--sequential/--no-sequential",
            help="Fit each layer on what the already-compressed layers feed it, with the dense outputs as target "
            "(whitening methods: svd-llm, basis-sharing, ngc, svd-llm-v2, aa-svd, zs-svd). Default: the method's own.",
            show_default=False,
        ),
    ] = None,
    sequential_shrink: Annotated[
        float | None,
        typer.Option(
            metavar="LAMBDA",
            help="Ridge of the sequential update, as a fraction of the mean input variance: 0 fits the compressed "
            "layer's inputs exactly to the dense outputs (aa-svd's anchored target), larger values pull the update "
            "toward the dense weights (less fitted to the calibration text). "
            "Default: the method's own (ngc: 1 below R = 0.5, 0.1 from 0.5; aa-svd 0; others 0.1).",
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
        str | None,
        typer.Option(
            metavar="none|local|block|distill|block+distill|local+distill",
            help="Refinement after the closed form (SPEC §5): per-group output MSE (local), each decoder layer's "
            "output MSE against the dense layer (block, AA-SVD's; whitening methods), or KL to the dense model on "
            "refinement data (distill: see --refine-data, --refine-tokens); block+distill runs the first during the "
            "pipeline and distils the result (--refine-steps then counts distillation steps). The parameter count "
            "never changes. "
            "Default: the method's own (ngc and aa-svd: block in one process, else none).",
        ),
    ] = None,
    refine_steps: Annotated[
        int,
        typer.Option(
            metavar="K", help="Refinement steps (0 = default: local 50 per group, block 25 per layer, distill 100)."
        ),
    ] = 0,
    refine_lr: Annotated[
        float, typer.Option(metavar="LR", help="Relative step size of refinement (fraction of a factor's mean |x|).")
    ] = 1e-3,
    refine_data: Annotated[
        str | None,
        typer.Option(
            metavar="NAME|FILE",
            help="Distillation data: a corpus (its train split, else validation; never test) or a text file, cut "
            "into windows of --calib-len tokens. Default: the calibration corpus's split, all of it.",
        ),
    ] = None,
    refine_tokens: Annotated[
        int,
        typer.Option(
            metavar="N",
            help="Distillation budget in tokens: steps = N // (batch x accum x --calib-len). 0 = --refine-steps.",
        ),
    ] = 0,
    refine_batch: Annotated[int, typer.Option(metavar="B", help="Distillation windows per forward pass.")] = 1,
    refine_accum: Annotated[int, typer.Option(metavar="A", help="Distillation forward passes per step.")] = 1,
    refine_warmup: Annotated[
        float, typer.Option(metavar="F", help="Fraction of distillation steps with a linear warm-up (then cosine).")
    ] = 0.05,
    refine_heldout: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="Tokens (whole windows at the data's end) held out for early stopping; the factors with the lowest "
            "held-out KL are kept. 0 = none. Default: 4096, or one window in ten of shorter data.",
            show_default=False,
        ),
    ] = None,
    refine_eval_every: Annotated[
        int, typer.Option(metavar="K", help="Held-out KL every K distillation steps (0 = about ten times per run).")
    ] = 0,
    refine_patience: Annotated[
        int, typer.Option(metavar="P", help="Stop after P evaluations without improvement (0 = never stop early).")
    ] = 3,
    rank_multiple: Annotated[
        int,
        typer.Option(
            metavar="M",
            help="Round every rank down to a multiple of M (64 or 128 for GPU kernels; on an H100, unaligned ranks "
            "made a 7B-shaped prefill 3x slower). Removes slightly more than --ratio.",
        ),
    ] = 1,
    whitening: Annotated[
        str | None,
        typer.Option(
            metavar="cholesky|eigen",
            help="How whitening methods factorise C = S Sᵀ: a checked Cholesky factor (an eigendecomposition "
            "when its pivots are at rounding level) or always the eigendecomposition S = Q Λ^½ (SVD-LLM V2's). "
            "Default: the method's own (svd-llm-v2: eigen, else cholesky).",
        ),
    ] = None,
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
    factor_dtype: Annotated[
        str,
        typer.Option(
            metavar="float|int8",
            help="How the factors are stored and multiplied: float (the dtype of the other weights, --save-dtype) "
            "or int8 (after compression and refinement, torchao's int8 weight-only quantization with one scale "
            "per output row; needs pip install 'ngc[int8]').",
        ),
    ] = "float",
    device: Device = "cpu",
    stream: Annotated[
        bool | None,
        typer.Option(
            "--stream/--no-stream",
            help="Read a local model folder layer by layer from its safetensors shards and write the checkpoint "
            "layer by layer, never holding the whole model (default: whenever the options allow; FWSVD, "
            "distillation and auto allocation/topology load the whole model).",
            show_default=False,
        ),
    ] = None,
    calib_batch: Annotated[
        int, typer.Option(metavar="B", help="Calibration windows per forward pass (larger is faster on a GPU).")
    ] = 1,
    stats_precision: Annotated[
        str | None,
        typer.Option(
            metavar="float64|float32",
            help="Precision of the per-batch products of the calibration moments (always summed in float64). "
            "Default: float64 on the CPU, float32 on a GPU.",
        ),
    ] = None,
    hidden_on: Annotated[
        str,
        typer.Option(
            metavar="auto|device|host",
            help="Where the calibration hidden states wait between layers (auto: the device when they take at "
            "most half of its free memory).",
        ),
    ] = "auto",
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
      ngc compress smollm2-135m --method ngc --ratio 0.3 --calib-samples 64 --out smol-ngc
      ngc compress smollm2-135m --method ngc --ratio 0.5 --factor-dtype int8 --out smol-ngc-50-int8
    """
    from ngc.cli.compress_run import CompressJob, run_compression
    from ngc.config import CalibConfig, CompressionConfig
    from ngc.topology.blocks import parse_roles

    config = CompressionConfig(
        method=method,
        ratio=ratio,
        roles=parse_roles(roles),
        topology=topology,
        alloc=alloc,
        alloc_floor=alloc_floor,
        sequential=sequential,
        sequential_shrink=sequential_shrink,
        exact=exact,
        refine=refine,
        refine_steps=refine_steps,
        refine_lr=refine_lr,
        refine_data=refine_data,
        refine_tokens=refine_tokens,
        refine_batch=refine_batch,
        refine_accum=refine_accum,
        refine_warmup=refine_warmup,
        refine_heldout=refine_heldout,
        refine_eval_every=refine_eval_every,
        refine_patience=refine_patience,
        rank_multiple=rank_multiple,
        whitening=whitening,
    )
    job = CompressJob(
        model=model,
        config=config,
        calib=CalibConfig(calib, calib_samples, calib_len, seed),
        text=None,
        refine_text=None,
        out=out,
        json_out=json_out,
        dtype=dtype,
        save_dtype=save_dtype,
        factor_dtype=factor_dtype,
        device=device,
        cache=cache,
        force=force,
        dry_run=dry_run,
        stream=stream,
        batch_size=calib_batch,
        precision=stats_precision,
        hidden_on=hidden_on,
        given=frozenset(
            name
            for name, value in (("alloc", alloc), ("refine", refine), ("sequential_shrink", sequential_shrink))
            if value is not None
        ),
    )
    run_compression(_checked(job, data_dir))


def _checked(job: CompressJob, data_dir: Path | None) -> CompressJob:
    """``job`` with its calibration and distillation texts, after everything that needs no model was checked:
    dtypes, output paths, the input, the data. The calibration text stays None when the method needs none, or on
    --dry-run; the distillation text without distillation."""
    from ngc.checkpoint.manifest import is_checkpoint
    from ngc.checkpoint.save import check_target
    from ngc.cli.compress_run import check_pipeline_options
    from ngc.data.windows import calibration_text, check_calibration_request
    from ngc.errors import UsageError
    from ngc.fit.methods import get_method
    from ngc.models.load import parse_dtype
    from ngc.modules.int8 import INT8, check_factor_dtype, check_int8_support
    from ngc.pipeline.distributed import launch_rank

    config, calib, out = job.config, job.calib, job.out
    compute_dtype = parse_dtype(job.dtype, "--dtype")
    stored_dtype = job.stored_dtype or compute_dtype
    if check_factor_dtype(job.factor_dtype) == INT8:  # torchao present, and its kernels run here (before any output)
        check_int8_support(job.device, (compute_dtype, stored_dtype))
    _check_json_target(job.json_out)
    if out is None and not job.dry_run:
        raise UsageError("no --out folder given", hint="add --out DIR (or --dry-run to only see the plan)")
    if out is not None and launch_rank() == 0:  # under torchrun only rank 0 writes
        claim_output(out)
        check_target(out, job.force, inputs=input_paths(job.model))
    if Path(job.model).expanduser().is_dir() and is_checkpoint(Path(job.model).expanduser()):
        raise UsageError(f"{job.model} is already a compressed checkpoint", hint="compress the original dense model")
    method = get_method(config.method)
    needs_data = method.needs_moments or method.needs_fisher or config.refine != "none"
    check_pipeline_options(job.batch_size, job.precision, job.hidden_on)
    text = calibration_text(calib.source, data_dir) if needs_data and not job.dry_run else None
    if text is not None:
        check_calibration_request(calib.n_windows, calib.window_len, text.text)
    refine_text = None
    if config.refines("distill") and not job.dry_run:
        from ngc.refine.options import distill_options

        distill_options(config, calib.window_len)  # a budget smaller than one step is refused here
        refine_text = text if config.refine_data is None else calibration_text(config.refine_data, data_dir)
    return replace(job, text=text, refine_text=refine_text)
