"""``ngc export DIR --dense OUT``: a plain transformers checkpoint with the rebuilt dense weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ngc.cli.eval_cmd import _check_json_target
from ngc.cli.options import JsonOut, claim_output, releases_claims

#: written into every dense export: marks a folder that `ngc export --force` may replace
EXPORT_RECORD = "ngc_export.json"


@releases_claims
def export_command(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="A checkpoint folder written by `ngc compress`.")],
    dense: Annotated[Path, typer.Option("--dense", metavar="OUT", help="Folder for the dense transformers model.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing OUT folder.")] = False,
    json_out: JsonOut = None,
) -> None:
    """Write DIR's model with every factorised block multiplied back into a dense weight (W = A Bᵀ).

    For tools that cannot load factorised modules: the folder loads with
    AutoModelForCausalLM.from_pretrained(OUT) and gives the same outputs, but it is as large as the dense model
    again - compression gains nothing there.

    Examples:

    \b
      ngc export out/smol-svdllm-30 --dense out/smol-svdllm-30-dense
    """
    from rich.console import Console

    from ngc.atomic import atomic_folder, check_output_folder, write_json_atomic
    from ngc.checkpoint.load import detach_quantizer, load_checkpoint
    from ngc.modules.swap import densify

    claim_output(dense)
    check_output_folder(dense, force, marker=EXPORT_RECORD, inputs=[folder], flag="--dense")
    _check_json_target(json_out)
    console = Console(stderr=True)
    loaded = load_checkpoint(folder)
    replaced = densify(loaded.model)
    detach_quantizer(loaded.model)  # a dense folder: config.json must not name ngc any more
    with atomic_folder(dense, replace=force) as tmp:
        loaded.model.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / EXPORT_RECORD, {"checkpoint": str(folder), "modules_rebuilt": replaced})
    size = sum(p.stat().st_size for p in dense.iterdir())
    compressed = sum(p.stat().st_size for p in folder.iterdir())
    console.print(
        f"wrote {dense}: {replaced} modules rebuilt dense; {size / 2**20:.1f} MiB on disk "
        f"(the compressed checkpoint takes {compressed / 2**20:.1f} MiB)"
    )
    if json_out is not None:
        record = {"checkpoint": str(folder), "dense": str(dense), "modules_rebuilt": replaced}
        write_json_atomic(json_out, record | {"dense_bytes": size, "checkpoint_bytes": compressed})
