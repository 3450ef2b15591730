"""``ngc demo``: the main job end to end on the packaged SmolLM2 (compress, save, reload, evaluate, plot)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ngc.cli.options import CacheDir, DataDir, claim_output, input_paths, releases_claims

DEMO_METHOD = "ngc"
DEMO_TOPOLOGY = "intra"
DEMO_RATIO = 0.3


@releases_claims
def demo_command(
    out: Annotated[Path, typer.Option(metavar="DIR", help="Folder for the checkpoint, JSON and plot.")] = Path(
        "ngc-demo"
    ),
    model: Annotated[str, typer.Option(metavar="MODEL", help="Model to compress.")] = "smollm2-135m",
    ratio: Annotated[float, typer.Option(metavar="R", help="Fraction of decoder linear weights removed.")] = DEMO_RATIO,
    max_windows: Annotated[
        int, typer.Option(metavar="K", help="Evaluate the first K windows of 2048 tokens (0 = whole test set).")
    ] = 8,
    calib_samples: Annotated[int, typer.Option(metavar="N", help="Calibration windows.")] = 16,
    calib_len: Annotated[int, typer.Option(metavar="L", help="Tokens per calibration window.")] = 512,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing DIR.")] = False,
    data_dir: DataDir = None,
    cache: CacheDir = None,
) -> None:
    """Compress MODEL with NGC at R = 0.3 (its default: intra-layer groups, sequential update), save, reload, and
    compare perplexity with the dense model.

    Writes DIR/checkpoint (loads with `ngc eval DIR/checkpoint`), DIR/demo.json and DIR/demo.png. Calibration is
    WikiText-2 (train, else validation); evaluation is the first K windows of the WikiText-2 test set.

    Examples:

    \b
      ngc demo
      ngc demo --ratio 0.5 --max-windows 0 --out demo-r50 --force
    """
    from rich.console import Console

    from ngc.api import compress
    from ngc.atomic import check_output_folder, write_json_atomic
    from ngc.checkpoint.load import load_checkpoint
    from ngc.checkpoint.manifest import base_identity
    from ngc.checkpoint.save import save_checkpoint
    from ngc.config import CalibConfig, CompressionConfig
    from ngc.data.corpora import load_corpus
    from ngc.data.windows import (
        CalibrationWindows,
        calibration_text,
        check_calibration_request,
        check_window_len,
        sample_windows,
        tokenize_text,
    )
    from ngc.eval.perplexity import check_eval_args, perplexity
    from ngc.models.load import load_model
    from ngc.reports.plots import dense_vs_compressed
    from ngc.reports.tables import accounting_table, perplexity_table, stdout_console

    config = CompressionConfig(method=DEMO_METHOD, topology=DEMO_TOPOLOGY, ratio=ratio)
    calib_config = CalibConfig("wikitext2", calib_samples, calib_len, 0)
    check_eval_args(2048, max_windows)
    claim_output(out)
    check_output_folder(out, force, marker="checkpoint/ngc.json", inputs=input_paths(model))
    test = load_corpus("wikitext2", "test", data_dir)
    calib_text = calibration_text(calib_config.source, data_dir)
    check_calibration_request(calib_samples, calib_len, calib_text.text)

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    console = Console(stderr=True)
    loaded = load_model(model, cache=cache)
    console.print(f"[1/5] loaded {model} ({loaded.spec.family}) in {loaded.load_seconds:.1f} s")
    check_window_len(calib_len, loaded.context_len)
    dense_ppl = perplexity(loaded, test, 2048, max_windows or None)
    console.print(f"[2/5] dense perplexity {dense_ppl.ppl:.3f}")
    base = base_identity(loaded.model, model)
    tokens = tokenize_text(loaded.tokenizer, calib_text.text)
    windows = sample_windows(tokens, calib_samples, calib_len, calib_config.seed, loaded.bos_token_id)
    result = compress(loaded.model, config, CalibrationWindows(windows, calib_text.name, calib_text.split, 0))
    console.print(f"[3/5] compressed: calibration {result.calibration_seconds:.1f} s, fit {result.fit_seconds:.1f} s")
    folder = out / "checkpoint"
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(loaded.model, loaded.tokenizer, folder, result, base, force=force)
    reloaded = load_checkpoint(folder)
    console.print(f"[4/5] saved and reloaded {folder}")
    compressed_ppl = perplexity(reloaded, test, 2048, max_windows or None)
    console.print(f"[5/5] compressed perplexity {compressed_ppl.ppl:.3f}")

    accounting = result.accounting
    table = perplexity_table([dense_ppl, compressed_ppl], title=f"{model}: dense vs NGC {DEMO_TOPOLOGY} at R = {ratio}")
    stdout_console().print(table)
    stdout_console().print(accounting_table(accounting, title="accounting"))
    write_json_atomic(
        out / "demo.json",
        {
            "model": model,
            "config": config.to_dict(),
            "calibration": result.calibration,
            "dense": dense_ppl.to_dict(),
            "compressed": compressed_ppl.to_dict(),
            "accounting": accounting.to_dict(),
            "calibration_seconds": result.calibration_seconds,
            "fit_seconds": result.fit_seconds,
        },
    )
    dense_vs_compressed(
        f"{model}, NGC {DEMO_TOPOLOGY} at R = {ratio}",
        {"dense": dense_ppl.ppl, f"NGC R={ratio}": compressed_ppl.ppl},
        {
            "decoder\nlinear weights": 1 - accounting.ratio_removed,
            "all\nparameters": accounting.model_ratio_kept,
            "MACs\nper token": accounting.mac_ratio,
        },
        out / "demo.png",
    )
    console.print(f"wrote {folder}, {out / 'demo.json'}, {out / 'demo.png'}")
