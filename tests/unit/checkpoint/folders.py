"""Checkpoint folders for the tests: a compressed tiny model, its logits, JSON edits, and the format-1 layout."""

from __future__ import annotations

import json

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ngc.api import compress
from ngc.config import CompressionConfig
from ngc.data.windows import CalibrationWindows
from ngc.models.tiny import build_tiny_model


def compressed(family="llama", method="basis-sharing"):
    model = build_tiny_model(family)
    tokens = torch.randint(0, 250, (3, 40), generator=torch.Generator().manual_seed(0))
    compress(model, CompressionConfig(method=method, ratio=0.3), CalibrationWindows(tokens, "random", None, 0))
    return model


def logits(model, seed: int = 3) -> torch.Tensor:
    ids = torch.randint(0, 250, (2, 16), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(input_ids=ids).logits


def edit_json(path, change):
    payload = json.loads(path.read_text())
    change(payload)
    path.write_text(json.dumps(payload))


def make_format_1(folder):
    """Strip a current single-file checkpoint to what format 1 wrote: safetensors' own ``save_file`` of the tensors
    without the guard (aliases in the header), no quantization_config in config.json, format_version 1."""
    guard = json.loads((folder / "config.json").read_text())["quantization_config"]["guard"]
    tensors = load_file(str(folder / "model.safetensors"))
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        aliases = handle.metadata()["ngc.aliases"]
    del tensors[guard]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt", "ngc.aliases": aliases})
    edit_json(folder / "config.json", lambda c: c.pop("quantization_config"))
    edit_json(folder / "ngc.json", lambda m: m.update(format_version=1))
    return folder
