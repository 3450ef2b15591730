"""Honest accounting (SPEC §3), read from the modules of a (compressed) model.

- ``ratio_removed``: fraction of the decoder's linear *weights* removed (embeddings, LM head, norms and biases
  are outside both sides), the convention of SVD-LLM and Basis Sharing. A shared basis counts once.
- whole-model parameters and stored bytes: every distinct tensor once (tied embeddings count once).
- int8 factors (``ngc.modules.int8``): each entry is one weight of one byte; their per-row scales are stored
  bytes, not weights (like a quantizer's metadata).
- MACs per token: decoder linears plus the LM head; attention scores and norms, which depend on the context
  length and are untouched by compression, are excluded. Members of one layer that share a basis compute its
  message once; a basis shared across layers is applied once per layer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import nn

from ngc.arch import find_blocks
from ngc.modules.factorized import FactorizedLinear, GroupBasis
from ngc.modules.int8 import Int8Factor


@dataclass(frozen=True)
class GroupRank:
    id: str
    rank: int
    n: int
    members: tuple[str, ...]  # "<module>:<role>"
    dense_params: int
    kept_params: int


@dataclass(frozen=True)
class Accounting:
    decoder_linear_params_dense: int
    decoder_linear_params_kept: int
    model_params_dense: int
    model_params_kept: int
    stored_bytes: int
    macs_per_token_dense: int
    macs_per_token: int
    groups: tuple[GroupRank, ...] = field(default=())
    dense_modules: tuple[str, ...] = field(default=())  # decoder linear modules left dense

    @property
    def ratio_removed(self) -> float:
        return 1.0 - self.decoder_linear_params_kept / self.decoder_linear_params_dense

    @property
    def model_ratio_kept(self) -> float:
        return self.model_params_kept / self.model_params_dense

    @property
    def mac_ratio(self) -> float:
        """Compressed over dense MACs per token (the prefill speed-up limit is its inverse)."""
        return self.macs_per_token / self.macs_per_token_dense

    @classmethod
    def from_dict(cls, data: dict) -> Accounting:
        """Rebuild from :meth:`to_dict` output (derived keys are recomputed, not read)."""
        groups = tuple(GroupRank(**{**g, "members": tuple(g["members"])}) for g in data.get("groups", ()))
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k not in ("groups", "dense_modules")}
        return cls(**fields, groups=groups, dense_modules=tuple(data.get("dense_modules", ())))

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(ratio_removed=self.ratio_removed, model_ratio_kept=self.model_ratio_kept, mac_ratio=self.mac_ratio)
        return data


def _unique_parameters(model: nn.Module) -> list:
    seen: set[int] = set()
    unique = []
    for parameter in model.parameters():  # parameters() already skips repeated objects
        key = parameter.data_ptr() if parameter.device.type != "meta" else id(parameter)  # meta: no storage
        if key not in seen or parameter.numel() == 0:
            seen.add(key)
            unique.append(parameter)
    return unique


def account(model: nn.Module) -> Accounting:
    """Accounting of ``model`` as it is now (dense or compressed)."""
    dense_total = kept_total = macs_dense = macs = 0
    bases: dict[int, GroupBasis] = {}
    members: dict[int, list[str]] = {}
    dense_params_of: dict[int, int] = {}
    a_params_of: dict[int, int] = {}
    dense_modules: list[str] = []
    per_layer_bases: set[tuple[int, int]] = set()
    for block in find_blocks(model):
        module = model.get_submodule(block.name)
        m, n = block.out_features, block.in_features
        dense_total += m * n
        macs_dense += m * n
        if not isinstance(module, FactorizedLinear):
            kept_total += m * n
            macs += m * n
            dense_modules.append(block.name)
            continue
        for role, A, basis in zip(module.roles, module.A, module.bases, strict=True):
            key = id(basis)
            bases[key] = basis
            members.setdefault(key, []).append(f"{block.name}:{role}")
            dense_params_of[key] = dense_params_of.get(key, 0) + A.shape[0] * n
            a_params_of[key] = a_params_of.get(key, 0) + A.numel()
            kept_total += A.numel()
            macs += A.numel()
            if (block.layer, key) not in per_layer_bases:
                per_layer_bases.add((block.layer, key))
                macs += basis.numel()
    kept_total += sum(basis.numel() for basis in bases.values())
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_macs = int(head.weight.numel()) if head is not None and hasattr(head, "weight") else 0
    unique = _unique_parameters(model)
    scales = {id(m.scale) for m in model.modules() if isinstance(m, Int8Factor)}
    model_kept = sum(p.numel() for p in unique if id(p) not in scales)
    groups = tuple(
        GroupRank(
            basis.group_id,
            basis.rank,
            basis.n,
            tuple(members[key]),
            dense_params_of[key],
            a_params_of[key] + basis.numel(),
        )
        for key, basis in bases.items()
    )
    return Accounting(
        decoder_linear_params_dense=dense_total,
        decoder_linear_params_kept=kept_total,
        model_params_dense=model_kept + dense_total - kept_total,
        model_params_kept=model_kept,
        stored_bytes=sum(p.numel() * p.element_size() for p in unique),
        macs_per_token_dense=macs_dense + head_macs,
        macs_per_token=macs + head_macs,
        groups=groups,
        dense_modules=tuple(dense_modules),
    )
