"""ngc as a transformers quantization method: ``from_pretrained`` of a checkpoint builds the factorised structure.

``quantization_config = {"quant_method": "ngc", ...}`` in ``config.json`` selects :class:`NgcHfQuantizer`, which
transformers calls on the model skeleton it built on the meta device (before any weight is read):

- ``_process_model_before_weight_loading`` swaps the dense modules for the factorised ones (still on meta), checks
  the checkpoint's file headers against that structure (names, shapes, aliases: any mismatch is a
  :class:`CheckpointError` before a byte is read), and declares the aliases (a cross-layer basis, stored once) as
  tied weights, so transformers neither reports them missing nor materialises them apart;
- transformers then loads the stored tensors into the factorised parameters;
- ``_process_model_after_weight_loading`` restores the index buffers of fused modules (which transformers
  re-creates empty) and checks that nothing was left on the meta device.

``save_pretrained`` of such a model writes each shared tensor once, the aliases and the guard tensor. int8 factors
(``factor_dtype: "int8"`` in the quantization_config) are plain int8 and scale tensors to transformers: they are
built empty on meta with the structure and loaded by name like any other tensor.
Registration happens on first import of ``transformers.quantizers.auto`` (see :mod:`ngc.checkpoint.hook`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from ngc.checkpoint.manifest import FORMAT_VERSION, MANIFEST, QUANT_METHOD, CheckpointError
from ngc.checkpoint.shards import ALIASES_KEY, canonical_tensors
from ngc.checkpoint.structure import Structure, structure_from_quantization_config
from ngc.checkpoint.tensors import check_stored, left_on_meta, read_stored
from ngc.modules.factorized import FactorizedLinear, GroupBasis
from ngc.modules.int8 import Int8Factor


class NgcConfig(QuantizationConfigMixin):
    """The ``quantization_config`` of an ngc checkpoint: format version, group records, guard tensor name."""

    def __init__(
        self,
        groups: list[dict[str, Any]] | None = None,
        format_version: int = FORMAT_VERSION,
        guard: str | None = None,
        manifest: str = MANIFEST,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("quant_method", None)
        self.quant_method = QUANT_METHOD
        self.format_version = format_version
        self.manifest = manifest
        self.guard = guard
        self.groups = groups or []
        for key, value in kwargs.items():  # fields of a newer writer travel unchanged
            setattr(self, key, value)

    def structure(self, source: str) -> Structure:
        return structure_from_quantization_config(self.to_dict(), source)


class NgcHfQuantizer(HfQuantizer):
    """Loads ngc checkpoints through ``from_pretrained``; never quantizes a dense model."""

    requires_calibration = True  # only pre-compressed checkpoints: ``ngc compress`` makes them

    def __init__(self, quantization_config: NgcConfig, **kwargs: Any) -> None:
        super().__init__(quantization_config, **kwargs)
        self._output_indices: dict[str, torch.Tensor] = {}

    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        if not self.pre_quantized:
            raise CheckpointError(
                "ngc cannot compress a model inside from_pretrained",
                hint="compress with `ngc compress` or ngc.compress(...), then load the checkpoint folder",
            )

    def _process_model_before_weight_loading(self, model: Any, checkpoint_files: list[str] | None = None, **kwargs):
        from ngc.checkpoint.structure import build_structure

        folder = Path(checkpoint_files[0]).parent if checkpoint_files else None
        source = str(folder / "config.json") if folder else "the quantization_config"
        structure = self.quantization_config.structure(source)
        build_structure(model, structure)
        self._output_indices = {
            name: module.output_index.clone()
            for name, module in model.named_modules()
            if isinstance(module, FactorizedLinear) and module.output_index is not None
        }
        _, aliases = canonical_tensors(model)
        tied = dict(getattr(model, "all_tied_weights_keys", None) or {})
        if folder is not None:
            check_stored(model, read_stored(folder), source, frozenset({structure.guard} - {None}), tied)
        tied.update(aliases)
        model.all_tied_weights_keys = tied
        _skip_initialisation(model)
        if structure.guard is not None:
            ignored = set(model._keys_to_ignore_on_load_unexpected or ())
            model._keys_to_ignore_on_load_unexpected = ignored | {f"^{re.escape(structure.guard)}$"}
        return model

    def _process_model_after_weight_loading(self, model: Any, **kwargs: Any):
        for name, index in self._output_indices.items():
            module = model.get_submodule(name)
            device = next(module.parameters()).device
            module.output_index = index.to(device if device.type != "meta" else "cpu")
        offloaded = {"disk", "cpu"} & set((getattr(model, "hf_device_map", None) or {}).values())
        if not offloaded or len(set(model.hf_device_map.values())) == 1:
            left = left_on_meta(model)
            if left:
                raise CheckpointError(
                    f"{len(left)} tensor(s) were not loaded, e.g. {left[0]}",
                    hint="the checkpoint is incomplete; load it with ngc.load to see which file is at fault",
                )
        return model

    def get_state_dict_and_metadata(self, model: Any) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        tensors, aliases = canonical_tensors(model)
        guard = self.quantization_config.guard
        if guard is not None:
            tensors[guard] = torch.zeros(0)
        return tensors, {ALIASES_KEY: json.dumps(aliases, sort_keys=True)}

    def is_serializable(self, *args: Any, **kwargs: Any) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True  # the factors are plain parameters

    @property
    def is_compileable(self) -> bool:
        return True


def _skip_initialisation(model: Any) -> None:
    """Mark the factorised modules and their parents initialised: every tensor of theirs is in the files (checked),
    and a family's ``_init_weights`` would look for the dense ``weight`` of their children (GPT-2's ``c_proj``)."""
    for module in model.modules():
        children = list(module.children())
        if isinstance(module, (FactorizedLinear, GroupBasis, Int8Factor)) or any(
            isinstance(c, FactorizedLinear) for c in children
        ):
            module._is_hf_initialized = True


def register() -> None:
    """Register :class:`NgcConfig` and :class:`NgcHfQuantizer` under ``quant_method="ngc"`` (idempotent)."""
    from transformers.quantizers import auto

    missing = [name for name in ("register_quantization_config", "register_quantizer") if not hasattr(auto, name)]
    if missing:
        raise UnsupportedTransformersError(missing)
    if QUANT_METHOD in auto.AUTO_QUANTIZER_MAPPING:
        return
    auto.register_quantization_config(QUANT_METHOD)(NgcConfig)
    auto.register_quantizer(QUANT_METHOD)(NgcHfQuantizer)


class UnsupportedTransformersError(CheckpointError):
    """A transformers without the quantizer registry."""

    def __init__(self, missing: list[str]) -> None:
        from importlib.metadata import version

        super().__init__(
            f"transformers {version('transformers')} has no {', '.join(missing)}, so from_pretrained cannot load "
            "ngc checkpoints",
            hint="load them with ngc.load(path), or install a transformers with custom quantizers (>= 4.47)",
        )


def _register_on_import() -> None:
    from ngc.checkpoint.hook import register_now

    register_now()


_register_on_import()
