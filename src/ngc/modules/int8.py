"""int8 weight-only factors through torchao (``ngc compress --factor-dtype int8``).

After compression (and refinement) each factor matrix becomes int8 with one scale per output row: torchao's
``Int8WeightOnlyConfig`` (symmetric, per row) applied to the factor in the orientation ``F.linear`` reads, ``Bᵀ``
of a basis as a (k, n) weight and each ``A`` as an (m, k) weight. :func:`quantize_factors` is the one place that
makes this swap, on a whole model, in torchao's ``quantize_(model, config)`` style.

An :class:`Int8Factor` keeps the int8 values and the scales as two plain tensors, ``qdata`` (out, in) and ``scale``
(out, 1) in the model's float dtype: that is what a checkpoint stores (safetensors, by name) and what every loader
fills, transformers' included. Each forward wraps the two, without copying, in torchao's ``Int8Tensor`` and calls
``F.linear``, so that torchao's kernel does the product, eagerly and inside one ``torch.compile`` graph. A basis
shared by several modules stays one :class:`Int8Factor`. The float path is untouched: a module that was never
quantized runs exactly the code it ran before.

The scale is kept in the model's dtype because torchao's kernel casts it to the activation dtype anyway
(``y = (x @ qᵀ) * scale``); storing it so changes no output and makes a saved checkpoint reload to the same bits.
torchao is an optional extra (``pip install 'ngc[int8]'``), imported only when int8 factors are asked for.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ngc.errors import MissingPackageError, UsageError
from ngc.modules.factorized import FactorizedLinear, GroupBasis

FLOAT, INT8 = "float", "int8"
FACTOR_DTYPES = (FLOAT, INT8)  # float: the factors have the dtype of every other weight
INSTALL_HINT = "pip install 'ngc[int8]' (torchao >= 0.18)"

_int8_tensor: Any = None  # torchao's Int8Tensor class, once imported


class TorchaoMissingError(MissingPackageError):
    """int8 factors were asked for (or a checkpoint holds them) but torchao cannot be imported."""

    exit_code = 2  # the request cannot be served by this installation: bad usage, like an unknown option


def require_torchao() -> Any:
    """torchao's ``Int8Tensor`` class (torchao imported on first use), or :class:`TorchaoMissingError`."""
    global _int8_tensor
    if _int8_tensor is None:
        try:
            from torchao.quantization import Int8Tensor
        except Exception as exc:  # missing, too old (no Int8Tensor), or built for another torch
            raise TorchaoMissingError(
                f"int8 factors need torchao, which cannot be imported here ({type(exc).__name__}: {exc})",
                hint=f"{INSTALL_HINT}, or keep float factors (--factor-dtype float)",
            ) from exc
        _int8_tensor = Int8Tensor
    return _int8_tensor


def check_factor_dtype(name: str) -> str:
    if name not in FACTOR_DTYPES:
        raise UsageError(f"unknown factor dtype {name!r}", hint=f"use one of {', '.join(FACTOR_DTYPES)}")
    return name


def int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torchao's int8 weight-only quantization of one (out, in) weight: ``(qdata, scale)``, int8 (out, in) and
    one symmetric scale per output row (out, 1) in ``weight``'s dtype."""
    int8_tensor = require_torchao()
    from torchao.quantization import Int8WeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerRow

    out_features, in_features = weight.shape
    if in_features == 1:  # torchao's per-row path fails on one column; a repeated column keeps every row's maximum
        qdata, scale = int8_rows(weight.repeat(1, 2))
        return qdata[:, :1].contiguous(), scale
    holder = nn.Linear(in_features, out_features, bias=False, device="meta")
    holder.weight = nn.Parameter(weight.detach().contiguous(), requires_grad=False)
    # set_inductor_config=False: torchao would otherwise change inductor's global settings for every later compile
    quantize_(holder, Int8WeightOnlyConfig(granularity=PerRow(), set_inductor_config=False))
    quantized = holder.weight
    if not isinstance(quantized, int8_tensor) or list(quantized.block_size) != [1, in_features]:
        raise RuntimeError(f"torchao returned {type(quantized).__name__}, not per-row int8 weights")
    return quantized.qdata.detach(), quantized.scale.detach().to(weight.dtype).reshape(out_features, 1)


class Int8Factor(nn.Module):
    """One factor as an int8 (out, in) weight with a scale per output row, applied by ``F.linear`` through torchao."""

    def __init__(self, qdata: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        require_torchao()
        if qdata.dtype != torch.int8 or qdata.ndim != 2 or tuple(scale.shape) != (qdata.shape[0], 1):
            raise ValueError(f"int8 (out, in) data and (out, 1) scales expected, got {qdata.shape} and {scale.shape}")
        self.qdata = nn.Parameter(qdata, requires_grad=False)
        self.scale = nn.Parameter(scale, requires_grad=False)

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> Int8Factor:
        """``weight`` (out, in) quantized; on the meta device, the empty structure of that shape."""
        if weight.device.type == "meta":
            return cls.empty(*weight.shape, dtype=weight.dtype, device=weight.device)
        return cls(*int8_rows(weight))

    @classmethod
    def empty(cls, out_features: int, in_features: int, *, dtype: torch.dtype, device: Any = None) -> Int8Factor:
        return cls(
            torch.empty(out_features, in_features, dtype=torch.int8, device=device),
            torch.empty(out_features, 1, dtype=dtype, device=device),
        )

    @property
    def shape(self) -> torch.Size:
        return self.qdata.shape

    def numel(self) -> int:
        return self.qdata.numel()

    def weight(self) -> torch.Tensor:
        """torchao's ``Int8Tensor`` over ``qdata`` and ``scale`` (a view: nothing is copied)."""
        return _int8_tensor(self.qdata, self.scale, [1, self.qdata.shape[1]], self.scale.dtype)

    def dequantize(self) -> torch.Tensor:
        """The float (out, in) matrix the int8 values stand for, in the scale's dtype."""
        return self.weight().dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight())

    def extra_repr(self) -> str:
        return f"out={self.qdata.shape[0]}, in={self.qdata.shape[1]}, int8 per-row, scale={self.scale.dtype}"


def factor_dtype_of(model: nn.Module) -> str:
    """``"int8"`` when the factors of ``model`` are int8, ``"float"`` when they are not (or there are none)."""
    kinds = {module.int8 for module in model.modules() if isinstance(module, (GroupBasis, FactorizedLinear))}
    if len(kinds) > 1:
        raise UsageError(
            "this model mixes int8 and float factors", hint="call ngc.quantize_factors(model) once on the whole model"
        )
    return INT8 if kinds == {True} else FLOAT


def quantize_factors(model: nn.Module, *, empty: bool = False) -> int:
    """Make every factor of ``model`` int8 (torchao's int8 weight-only, one scale per output row), in place.

    Returns the number of factor matrices made int8 (a shared basis once). Factors already int8 are left as they
    are. ``empty`` builds the int8 structure without values (to load a checkpoint into; the meta device works).
    A compression record on the model (``model.ngc_compression``) gets its accounting redone.
    """
    require_torchao()
    count = 0
    for module in model.modules():
        if isinstance(module, GroupBasis) and not module.int8:
            B = module._parameters.pop("B")  # (n, k)
            k, n = B.shape[1], B.shape[0]
            module.Bt = Int8Factor.empty(k, n, dtype=B.dtype, device=B.device) if empty else Int8Factor.from_float(B.T)
            module.int8 = True
            module.forget()
            count += 1
    for module in model.modules():
        if isinstance(module, FactorizedLinear) and not module.int8:
            factors = [
                Int8Factor.empty(*A.shape, dtype=A.dtype, device=A.device) if empty else Int8Factor.from_float(A)
                for A in module.A
            ]
            module.A = nn.ModuleList(factors)
            module.int8 = True
            count += len(factors)
    result = getattr(model, "ngc_compression", None)
    if result is not None and count:
        from ngc.accounting import account

        result.accounting = account(model)
    return count


def check_int8_support(device: str, dtypes: tuple[torch.dtype, ...]) -> None:
    """Refuse, before any work, int8 factors that torchao cannot quantize or multiply in ``dtypes`` on ``device``.

    A device that torch itself cannot use is left to the command's own device check.
    """
    require_torchao()
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, ValueError):
        return
    for dtype in dict.fromkeys(dtypes):
        try:
            factor = Int8Factor.from_float(torch.eye(4, 8, dtype=dtype, device=device))
            out = factor(torch.ones(2, 8, dtype=dtype, device=device))
            ok = out.shape == (2, 4) and bool(torch.isfinite(out).all())
        except Exception as exc:  # noqa: BLE001 - whatever torchao raises, the answer is the same refusal
            ok, cause = False, f" ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        else:
            cause = ""
        if not ok:
            dtype_name = str(dtype).removeprefix("torch.")
            raise UsageError(
                f"torchao's int8 weight-only kernels do not run in {dtype_name} on {device}{cause}",
                hint="keep float factors (--factor-dtype float), or use a --dtype / --save-dtype and --device "
                "they support (float32, bfloat16 or float16, on cpu or cuda)",
            )


# Checkpoint names of the factors of a float model (``...bases.0.B`` (n, k), ``...A.0`` (m, k)).
_FLOAT_B = re.compile(r"^(.*\.bases\.\d+)\.B$")
_FLOAT_A = re.compile(r"^(.*\.A\.\d+)$")


def _int8_names(name: str) -> tuple[str, str] | None:
    """The int8 names (data, scale) that replace the float factor ``name``; None for a tensor that is no factor."""
    for pattern, prefix in ((_FLOAT_B, ".Bt"), (_FLOAT_A, "")):
        match = pattern.match(name)
        if match:
            return f"{match.group(1)}{prefix}.qdata", f"{match.group(1)}{prefix}.scale"
    return None


def quantize_state(
    tensors: Mapping[str, torch.Tensor], aliases: Mapping[str, str]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """What :func:`quantize_factors` makes of a float model's tensors, by name (``{name: tensor}``, ``{alias:
    canonical}``): for the layer-streamed checkpoint writer, which sees tensors, not modules."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        names = _int8_names(name) if tensor.ndim == 2 else None
        if names is None:
            out[name] = tensor
            continue
        weight = tensor.T if names[0].endswith(".Bt.qdata") else tensor
        out[names[0]], out[names[1]] = int8_rows(weight)
    renamed: dict[str, str] = {}
    for alias, canonical in aliases.items():
        alias_names, canonical_names = _int8_names(alias), _int8_names(canonical)
        if alias_names is None or canonical_names is None:
            renamed[alias] = canonical
        else:
            renamed.update(zip(alias_names, canonical_names, strict=True))
    return out, renamed


def int8_sink(sink: Callable[..., None]) -> Callable[..., None]:
    """``sink`` (a checkpoint writer's ``add``) fed with int8 factors: see :func:`quantize_state`."""

    def add(tensors: Mapping[str, torch.Tensor], aliases: Mapping[str, str] | None = None) -> None:
        sink(*quantize_state(tensors, aliases or {}))

    return add
