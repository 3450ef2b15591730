"""Weights of a compressed model as one safetensors file: each storage once, aliases recorded.

A cross-layer basis (or tied embeddings) appears under several names in ``state_dict``; it is written once under
its first name, and the other names are listed in the file's metadata. Loading fills every canonical name,
checks shapes, and checks that the rebuilt model aliases exactly the names the file says.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ngc.checkpoint.manifest import CheckpointError
from ngc.checkpoint.shards import ALIASES_KEY, canonical_tensors


def save_weights(model: nn.Module, path: Path, dtype: torch.dtype | None = None) -> int:
    """Write the model's weights (floating tensors cast to ``dtype`` when given); returns bytes of tensor data."""
    tensors, aliases = canonical_tensors(model)
    out = {
        name: (t.to(dtype) if dtype is not None and t.is_floating_point() else t).contiguous().cpu()
        for name, t in tensors.items()
    }
    save_file(out, str(path), metadata={"format": "pt", ALIASES_KEY: json.dumps(aliases, sort_keys=True)})
    return sum(t.numel() * t.element_size() for t in out.values())


def load_weights(model: nn.Module, path: Path, manifest_path: Path) -> None:
    """Fill ``model`` (already rebuilt to the manifest's structure) from ``path``; every mismatch is an error."""
    expected, expected_aliases = canonical_tensors(model)
    try:
        with safe_open(str(path), "pt") as handle:
            stored_aliases = json.loads((handle.metadata() or {}).get(ALIASES_KEY, "{}"))
            names = set(handle.keys())
            missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
            if missing or extra:
                problems = [f"{len(missing)} tensor(s) missing, e.g. {missing[0]}"] if missing else []
                problems += [f"{len(extra)} unexpected tensor(s), e.g. {extra[0]}"] if extra else []
                raise CheckpointError(
                    f"{path} does not match {manifest_path}: {'; '.join(problems)}",
                    hint="the weights and the manifest come from different runs, or the file was edited; "
                    "compress again",
                )
            if stored_aliases != expected_aliases:
                raise CheckpointError(
                    f"{path} shares tensors differently from the structure in {manifest_path}",
                    hint="the weights and the manifest come from different runs; compress again",
                )
            with torch.no_grad():
                for name, target in expected.items():
                    stored = handle.get_tensor(name)
                    if stored.shape != target.shape:
                        raise CheckpointError(
                            f"{path}: {name} has shape {tuple(stored.shape)}, the manifest's structure needs "
                            f"{tuple(target.shape)}",
                            hint="the weights and the manifest come from different runs; compress again",
                        )
                    target.copy_(stored.to(target.dtype))
    except SafetensorError as exc:
        raise CheckpointError(
            f"{path} cannot be read: {exc}", hint="the file is damaged or truncated; compress again"
        ) from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} cannot be read: {exc}", hint="the file is damaged; compress again") from exc
