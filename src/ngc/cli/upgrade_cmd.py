"""``ngc upgrade CHECKPOINT``: rewrite a checkpoint of an older format in place, into the current one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def upgrade_command(
    folder: Annotated[
        Path, typer.Argument(metavar="CHECKPOINT", help="A checkpoint folder written by `ngc compress` or ngc.save.")
    ],
) -> None:
    """Rewrite CHECKPOINT in the current checkpoint format (2), in place, so transformers' loaders read it.

    Checkpoints of format 1 (written before sharded weights) load with ngc.load, but their config.json does not
    name ngc, so AutoModelForCausalLM.from_pretrained builds a plain dense model there and fills the compressed
    weights at random. The upgrade adds the quantization_config to config.json, stores the weights again with the
    zero-size guard tensor (shards above 2 GiB), and records format 2 in ngc.json; the tokenizer and every other
    file are kept as they are, and the weights' values do not change. After it, `import ngc` and
    from_pretrained(CHECKPOINT) give the same model as ngc.load(CHECKPOINT).

    The weights are checked against the recorded structure first, and the new folder is written beside the old
    one and renamed into its place: an interrupted upgrade leaves the checkpoint as it was. It needs free disk
    space for a second copy of the weights while it runs. A checkpoint already in the current format is left
    untouched; a folder that is not an ngc checkpoint is refused (exit code 2).

    Examples:

    \b
      ngc upgrade out/smol-svdllm-30
      python -c 'import ngc, transformers as t; t.AutoModelForCausalLM.from_pretrained("out/smol-svdllm-30")'
    """
    from ngc.checkpoint.upgrade import upgrade

    result = upgrade(folder)
    if not result.changed:
        print(f"{folder} is already in the current checkpoint format ({result.to_version}); nothing changed")
        return
    print(
        f"upgraded {folder} from format {result.from_version} to {result.to_version}: config.json names ngc, the "
        "weights carry the guard tensor; after `import ngc`, AutoModelForCausalLM.from_pretrained loads it"
    )
