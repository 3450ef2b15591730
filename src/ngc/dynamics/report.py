"""Per-layer dynamics of a model over several sequences (SPEC §8), with standard errors over sequences."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ngc.arch import decoder_layers
from ngc.calib.layers import record_layer_calls, run_layer
from ngc.dynamics.force import layer_forces
from ngc.dynamics.jacobian import decompose
from ngc.dynamics.lyapunov import lyapunov
from ngc.dynamics.trajectory import eager_attention, layer_states
from ngc.progress import progress


@dataclass(frozen=True)
class LayerDynamics:
    layer: int
    lyapunov: float  # token-time exponent λ (stability S = −λ)
    lyapunov_se: float
    divergence: float  # tr(J)/D of the layer update
    sym_top: float  # largest eigenvalue of Sym(J)
    driving_ratio: float  # ‖Skew‖_F / ‖Sym‖_F
    driving_ratio_se: float
    force_ratio: float | None = None
    departure: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _mean_se(values: list[float]) -> tuple[float, float]:
    finite = torch.tensor([v for v in values if math.isfinite(v)], dtype=torch.float64)
    if finite.numel() == 0:
        return math.nan, math.nan
    se = float(finite.std(unbiased=True) / math.sqrt(finite.numel())) if finite.numel() > 1 else math.nan
    return float(finite.mean()), se


def sequence_dynamics(
    model: nn.Module, tokens: torch.Tensor, t0: int, window: int, probes: int, lanczos_steps: int, seed: int
) -> tuple[torch.Tensor, list]:
    """λ per layer (linearised) and the depth decomposition of every layer update, for one sequence (T,)."""
    embeds = model.get_input_embeddings()(tokens).detach()
    lyap = lyapunov(lambda e: layer_states(model, e), embeds, t0, window, epsilon=None, seed=seed)
    calls = record_layer_calls(model, tokens.unsqueeze(0))
    hidden = calls.hidden[0]
    decompositions = []
    for index, layer in enumerate(decoder_layers(model)):
        kwargs = calls.kwargs[index][0]
        update = lambda h, layer=layer, kwargs=kwargs: run_layer(layer, h, kwargs) - h  # noqa: E731
        decompositions.append(decompose(update, hidden.detach(), probes, lanczos_steps, seed + index))
        with torch.no_grad():
            hidden = run_layer(layer, hidden, kwargs)
    return lyap, decompositions


def measure_dynamics(
    model: nn.Module,
    sequences: torch.Tensor,
    reference: nn.Module | None = None,
    *,
    t0: int | None = None,
    window: int | None = None,
    probes: int = 4,
    lanczos_steps: int = 10,
    seed: int = 0,
) -> list[LayerDynamics]:
    """Per-layer figures averaged over ``sequences`` (N, T). ``t0`` defaults to T // 4, ``window`` to the rest."""
    T = int(sequences.shape[1])
    t0 = T // 4 if t0 is None else t0
    window = min(T - t0 - 1, 64) if window is None else window
    per_layer: dict[int, dict[str, list[float]]] = {}
    with eager_attention(model):
        for n, tokens in enumerate(progress(sequences, desc="dynamics (sequences)", unit="seq")):
            lyap, decompositions = sequence_dynamics(model, tokens, t0, window, probes, lanczos_steps, seed + n)
            forces = layer_forces(model, reference, tokens) if reference is not None else None
            for index, d in enumerate(decompositions):
                row = per_layer.setdefault(index, {})
                row.setdefault("lyapunov", []).append(float(lyap[index]))
                row.setdefault("divergence", []).append(d.divergence)
                row.setdefault("sym_top", []).append(d.sym_top)
                row.setdefault("driving_ratio", []).append(d.driving_ratio)
                if forces is not None:
                    row.setdefault("force_ratio", []).append(forces[index].force_ratio)
                    row.setdefault("departure", []).append(forces[index].departure)
    layers = []
    for index, row in sorted(per_layer.items()):
        lyap_mean, lyap_se = _mean_se(row["lyapunov"])
        ratio_mean, ratio_se = _mean_se(row["driving_ratio"])
        layers.append(
            LayerDynamics(
                layer=index,
                lyapunov=lyap_mean,
                lyapunov_se=lyap_se,
                divergence=_mean_se(row["divergence"])[0],
                sym_top=_mean_se(row["sym_top"])[0],
                driving_ratio=ratio_mean,
                driving_ratio_se=ratio_se,
                force_ratio=_mean_se(row["force_ratio"])[0] if "force_ratio" in row else None,
                departure=_mean_se(row["departure"])[0] if "departure" in row else None,
            )
        )
    return layers
