"""Factorised linear modules: ``y = A (Bᵀ x) + b`` (SPEC §1), with input states shared by a group (SPEC §2).

A :class:`GroupBasis` owns ``B`` (n x k). Every module of the group holds a reference to the same basis object,
so the tensor is stored once. The basis remembers the last input it saw: modules of one layer that read the same
activation (q, k, v; gate, up) get the message ``z = Bᵀ x`` computed once. Modules in other layers pass a
different tensor and compute their own message.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class GroupBasis(nn.Module):
    """Input states ``B`` of one group (SPEC §2), shared by all members."""

    def __init__(self, group_id: str, n: int, k: int, *, dtype: torch.dtype | None = None, device=None) -> None:
        super().__init__()
        self.group_id = group_id
        self.B = nn.Parameter(torch.empty(n, k, dtype=dtype, device=device))
        self._last: tuple[torch.Tensor, int, bool, torch.Tensor] | None = None

    @property
    def rank(self) -> int:
        return int(self.B.shape[1])

    def message(self, x: torch.Tensor) -> torch.Tensor:
        """``z = Bᵀ x`` for every token (x: (..., n) -> (..., k)); reused while ``x`` is the same unchanged tensor."""
        last = self._last
        grad = torch.is_grad_enabled()
        version = -1 if x.is_inference() else x._version  # inference tensors keep no version counter
        if last is not None and last[0] is x and last[1] == version and last[2] == grad:
            return last[3]
        z = x @ self.B  # (..., k)
        self._last = (x, version, grad, z)
        return z

    def forget(self) -> None:
        self._last = None

    def extra_repr(self) -> str:
        return f"group={self.group_id!r}, n={self.B.shape[0]}, k={self.rank}"

    def _apply(self, fn, recurse=True):  # dtype/device changes invalidate the cached message
        self._last = None
        return super()._apply(fn, recurse)


class FactorizedLinear(nn.Module):
    """Replaces one linear module. Each part (a role) reads a group basis and has its own output states ``A``.

    Parts are stacked along the output in role order; ``output_order`` restores a fused module's interleaved
    layout (GPT-NeoX packs q, k, v per head). The original bias is kept unchanged.
    """

    def __init__(
        self,
        bases: Sequence[GroupBasis],
        part_rows: Sequence[int],
        roles: Sequence[str],
        bias: torch.Tensor | None,
        output_order: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if not (len(bases) == len(part_rows) == len(roles)):
            raise ValueError("one basis, one row count and one role per part")
        self.bases = nn.ModuleList(bases)
        self.roles = tuple(roles)
        first = bases[0].B
        self.A = nn.ParameterList(
            [
                nn.Parameter(torch.empty(m, b.rank, dtype=first.dtype, device=first.device))
                for m, b in zip(part_rows, bases, strict=True)
            ]
        )
        self.in_features = int(first.shape[0])
        self.out_features = int(sum(part_rows))
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        if output_order is not None:
            inverse = torch.empty(len(output_order), dtype=torch.long)
            inverse[torch.as_tensor(list(output_order))] = torch.arange(len(output_order))
            self.register_buffer("output_index", inverse, persistent=False)
        else:
            self.output_index = None

    def to_dense(self) -> torch.Tensor:
        """The rebuilt dense weight (out, in) in torch's convention, for export and tests; never used in forward."""
        W = torch.cat([A @ basis.B.T for A, basis in zip(self.A, self.bases, strict=True)], dim=0)
        return W if self.output_index is None else W.index_select(0, self.output_index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [basis.message(x) @ A.T for A, basis in zip(self.A, self.bases, strict=True)]
        y = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        if self.output_index is not None:
            y = y.index_select(-1, self.output_index)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        ranks = ", ".join(f"{r}:k={b.rank}" for r, b in zip(self.roles, self.bases, strict=True))
        return f"in={self.in_features}, out={self.out_features}, {ranks}, bias={self.bias is not None}"
