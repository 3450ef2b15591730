"""Factorised linear modules: ``y = A (Bᵀ x) + b`` (SPEC §1), with input states shared by a group (SPEC §2).

A :class:`GroupBasis` owns ``B`` (n x k). Every module of the group holds a reference to the same basis object,
so the tensor is stored once. Where several members of one layer read the same activation (q, k, v; gate, up),
the basis keeps the message ``z = Bᵀ x`` of the last input until all ``readers`` of it have taken it, then drops
it: nothing outlives its layer, so memory does not grow with depth. Modules in other layers pass a different
tensor and compute their own message.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class GroupBasis(nn.Module):
    """Input states ``B`` of one group (SPEC §2), shared by all members."""

    def __init__(
        self, group_id: str, n: int, k: int, *, readers: int = 1, dtype: torch.dtype | None = None, device=None
    ) -> None:
        super().__init__()
        self.group_id = group_id
        self.readers = readers  # members of one layer that read the same input
        self.B = nn.Parameter(torch.empty(n, k, dtype=dtype, device=device))
        self._last: tuple[torch.Tensor, int, bool, torch.Tensor] | None = None
        self._taken = 0

    @property
    def rank(self) -> int:
        return int(self.B.shape[1])

    def message(self, x: torch.Tensor) -> torch.Tensor:
        """``z = Bᵀ x`` for every token (x: (..., n) -> (..., k)); computed once for the ``readers`` of one input
        (the same unchanged tensor), and forgotten when the last of them has taken it."""
        if self.readers <= 1:
            return x @ self.B
        last = self._last
        grad = torch.is_grad_enabled()
        version = -1 if x.is_inference() else x._version  # inference tensors keep no version counter
        if last is not None and last[0] is x and last[1] == version and last[2] == grad:
            z = last[3]
            self._taken += 1
        else:
            z = x @ self.B  # (..., k)
            self._last, self._taken = (x, version, grad, z), 1
        if self._taken >= self.readers:
            self._last = None
        return z

    def forget(self) -> None:
        self._last, self._taken = None, 0

    def extra_repr(self) -> str:
        return f"group={self.group_id!r}, n={self.B.shape[0]}, k={self.rank}, readers={self.readers}"

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
