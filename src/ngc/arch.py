"""The architecture table: everything that differs between model families lives here and nowhere else.

A row is keyed by ``config.model_type`` and names where the decoder layers are and which linear modules of a
layer play which role. Roles are the seven of SPEC §2: ``q k v o gate up down``. A module may compute several
roles at once (GPT-2 ``attn.c_attn``, GPT-NeoX ``attention.query_key_value``): it is declared with all of them,
and :func:`role_weights` splits it. The table holds names and facts, never sizes: widths, heads and layer
counts are read from the loaded model.

Adding a family = one row in ``ARCHS`` + one tiny config in ``ngc.models.tiny``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ngc.errors import UnsupportedArchitectureError

ROLES: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass(frozen=True)
class ArchSpec:
    """How one family lays out its decoder.

    ``blocks`` maps a module suffix inside one decoder layer to the roles it computes, in the order they are
    packed along its output dimension. ``shared_input`` lists roles that read the same activation (they can
    share one input-state matrix and compute its message once, SPEC §2).
    """

    family: str
    layers: str
    blocks: Mapping[str, tuple[str, ...]]
    shared_input: tuple[tuple[str, ...], ...] = ()
    conv1d: bool = False  # weights stored in x out (GPT-2's Conv1D) instead of torch's out x in
    fused_per_head: bool = False  # a fused q/k/v packs [q k v] per attention head (GPT-NeoX), not [Q; K; V]
    needs_bos: bool = False  # evaluation windows start with BOS (SPEC §7)
    roles: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        roles = tuple(role for packed in self.blocks.values() for role in packed)
        unknown = sorted(set(roles) - set(ROLES))
        if unknown or len(set(roles)) != len(roles):
            raise ValueError(f"{self.family}: roles must be distinct and among {ROLES}, got {roles}")
        object.__setattr__(self, "roles", roles)


_LLAMA_LIKE_BLOCKS: Mapping[str, tuple[str, ...]] = {
    "self_attn.q_proj": ("q",),
    "self_attn.k_proj": ("k",),
    "self_attn.v_proj": ("v",),
    "self_attn.o_proj": ("o",),
    "mlp.gate_proj": ("gate",),
    "mlp.up_proj": ("up",),
    "mlp.down_proj": ("down",),
}
_LLAMA_LIKE_SHARED = (("q", "k", "v"), ("gate", "up"))

ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec("Llama", "model.layers", _LLAMA_LIKE_BLOCKS, _LLAMA_LIKE_SHARED),
    "mistral": ArchSpec("Mistral", "model.layers", _LLAMA_LIKE_BLOCKS, _LLAMA_LIKE_SHARED),
    "qwen2": ArchSpec("Qwen2", "model.layers", _LLAMA_LIKE_BLOCKS, _LLAMA_LIKE_SHARED),
    "qwen3": ArchSpec("Qwen3", "model.layers", _LLAMA_LIKE_BLOCKS, _LLAMA_LIKE_SHARED),
    "gemma3_text": ArchSpec("Gemma3", "model.layers", _LLAMA_LIKE_BLOCKS, _LLAMA_LIKE_SHARED, needs_bos=True),
    # Gemma3 4B and larger are vision-language models; only their language model's layers are compressed.
    "gemma3": ArchSpec(
        "Gemma3 multimodal",
        "model.language_model.layers",
        _LLAMA_LIKE_BLOCKS,
        _LLAMA_LIKE_SHARED,
        needs_bos=True,
    ),
    "gpt2": ArchSpec(
        "GPT-2",
        "transformer.h",
        {
            "attn.c_attn": ("q", "k", "v"),
            "attn.c_proj": ("o",),
            "mlp.c_fc": ("up",),
            "mlp.c_proj": ("down",),
        },
        (("q", "k", "v"),),
        conv1d=True,
    ),
    "opt": ArchSpec(
        "OPT",
        "model.decoder.layers",
        {
            "self_attn.q_proj": ("q",),
            "self_attn.k_proj": ("k",),
            "self_attn.v_proj": ("v",),
            "self_attn.out_proj": ("o",),
            "fc1": ("up",),
            "fc2": ("down",),
        },
        (("q", "k", "v"),),
    ),
    "gpt_neox": ArchSpec(
        "GPT-NeoX",
        "gpt_neox.layers",
        {
            "attention.query_key_value": ("q", "k", "v"),
            "attention.dense": ("o",),
            "mlp.dense_h_to_4h": ("up",),
            "mlp.dense_4h_to_h": ("down",),
        },
        (("q", "k", "v"),),
        fused_per_head=True,
    ),
}


def supported_families() -> str:
    """One line naming every supported family and its ``model_type``, for error messages."""
    return ", ".join(f"{spec.family} ({model_type})" for model_type, spec in ARCHS.items())


def arch_spec(model_or_config: object) -> ArchSpec:
    """The table row of a model or config; ``UnsupportedArchitectureError`` when there is none."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    spec = ARCHS.get(str(model_type))
    if spec is None:
        raise UnsupportedArchitectureError(
            f"model type {model_type!r} is not supported",
            hint=f"supported families: {supported_families()}; a new family is one row in ngc/arch.py",
        )
    return spec


@dataclass(frozen=True)
class Block:
    """One linear module of one decoder layer, with the roles it computes."""

    name: str  # qualified module path, e.g. "model.layers.3.self_attn.q_proj"
    roles: tuple[str, ...]
    layer: int
    in_features: int  # n
    out_features: int  # m of the whole module (the sum over its roles)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder layers, where the table says it is."""
    spec = arch_spec(model)
    layers = model.get_submodule(spec.layers)
    if not isinstance(layers, nn.ModuleList):
        raise UnsupportedArchitectureError(
            f"{spec.layers} of this {spec.family} model is a {type(layers).__name__}, not a list of layers",
            hint="the installed transformers may have renamed it; update the row in ngc/arch.py",
        )
    return layers


def _weight_shape(module: nn.Module, conv1d: bool) -> tuple[int, int]:
    """(out, in) of a linear module, whatever its storage convention (or of the module that replaced it)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return int(module.out_features), int(module.in_features)
    rows, cols = weight.shape
    return (cols, rows) if conv1d else (rows, cols)


def find_blocks(model: nn.Module, roles: tuple[str, ...] | None = None) -> list[Block]:
    """Every linear block of every decoder layer that computes one of ``roles`` (default: all)."""
    spec = arch_spec(model)
    wanted = set(spec.roles if roles is None else roles)
    unknown = wanted - set(ROLES)
    if unknown:
        raise UnsupportedArchitectureError(f"unknown role(s) {sorted(unknown)}", hint=f"roles are {', '.join(ROLES)}")
    blocks: list[Block] = []
    for index, _layer in enumerate(decoder_layers(model)):
        for suffix, packed in spec.blocks.items():
            if not wanted.intersection(packed):
                continue
            blocks.append(block_at(model, f"{spec.layers}.{index}.{suffix}"))
    return blocks


def block_at(model: nn.Module, name: str) -> Block:
    """The block of the module at ``name`` (a path ``find_blocks`` would list)."""
    spec = arch_spec(model)
    index, _, suffix = name.removeprefix(spec.layers + ".").partition(".")
    if not name.startswith(spec.layers + ".") or suffix not in spec.blocks or not index.isdigit():
        raise KeyError(f"{name} is not a decoder linear block of this {spec.family} model")
    out_features, in_features = _weight_shape(model.get_submodule(name), spec.conv1d)
    return Block(name, spec.blocks[suffix], int(index), in_features, out_features)


def split_rows(model: nn.Module, block: Block, rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split a tensor laid out along ``block``'s output rows (weights, gradients, row indices) into its roles.

    GPT-2 packs [Q; K; V] along the output; GPT-NeoX packs, per head h, [q_h; k_h; v_h]. ``rows`` has the
    module's output dimension first; the results are views where the layout allows.
    """
    if len(block.roles) == 1:
        return {block.roles[0]: rows}
    n_roles = len(block.roles)
    if arch_spec(model).fused_per_head:
        n_heads = int(model.config.num_attention_heads)
        head_dim = rows.shape[0] // (n_heads * n_roles)
        per_head = rows.reshape(n_heads, n_roles, head_dim, *rows.shape[1:])  # (heads, roles, head_dim, ...)
        return {role: per_head[:, i].reshape(n_heads * head_dim, *rows.shape[1:]) for i, role in enumerate(block.roles)}
    return dict(zip(block.roles, rows.chunk(n_roles, dim=0), strict=True))


def module_weight(model: nn.Module, block: Block) -> torch.Tensor:
    """The module's weight as one (m, n) matrix in torch's out x in convention (a view, never a copy)."""
    weight = model.get_submodule(block.name).weight
    return weight.t() if arch_spec(model).conv1d else weight


def role_weights(model: nn.Module, block: Block) -> dict[str, torch.Tensor]:
    """The weight of each role of ``block`` as an (m_role, n) matrix in torch's out x in convention."""
    return split_rows(model, block, module_weight(model, block).detach())


def input_key(model: nn.Module, layer: int, role: str) -> str:
    """The name of the activation a role reads, e.g. ``L3:q+k+v``: roles with equal keys read the same tensor."""
    spec = arch_spec(model)
    shared = next((group for group in spec.shared_input if role in group), (role,))
    return f"L{layer}:{'+'.join(shared)}"
