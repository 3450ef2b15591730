"""Factorised linear modules: ``y = A (Bᵀ x) + b`` (SPEC §1), with input states shared by a group (SPEC §2).

A :class:`GroupBasis` owns ``B`` (n x k). Every module of the group holds a reference to the same basis object,
so the tensor is stored once.

The message ``z = Bᵀ x`` of a basis is computed once per input, in two ways that hold no activation across calls:

- inside one :class:`FactorizedLinear` (a fused q|k|v module whose parts share a basis), by plain local reuse;
- across sibling modules that read the same input (the q, k and v projections under one attention module; gate and
  up under one MLP), their common parent opens a *message scope* for the length of its own call
  (:func:`share_messages`): inside it the basis reuses the message of an input it has already seen (same tensor,
  unchanged), and when the parent's call ends, normally or by an exception, the scope and its messages are gone.

The scope is eager-mode bookkeeping only. Under ``torch.compile`` (and ``torch.export``) every member computes
``x @ B`` itself, so the graph holds no Python state; identical products in one graph are then left to the
compiler: inductor merges them with ``freezing=True`` (its inference mode, used by :func:`ngc.eval.speed`), and
in training graphs, but not in plain no-grad graphs without freezing (measured on torch 2.13: 6 products for
q, k, v of one basis without freezing, 4 with it).

Factors may be int8 (:mod:`ngc.modules.int8`, after compression): a basis then holds ``Bt`` and a module its
``A`` as :class:`ngc.modules.int8.Int8Factor` (``int8`` is True), and each product is ``F.linear`` through torchao;
float factors run the float code below unchanged.
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
        self.readers = readers  # members of one layer that read the same input (reported, not needed)
        self.B = nn.Parameter(torch.empty(n, k, dtype=dtype, device=device))
        self.int8 = False  # True: B is replaced by the int8 (k, n) factor Bt (ngc.modules.int8)
        self._scopes = 0  # open message scopes (eager only)
        self._seen: list[tuple[torch.Tensor, int, bool, torch.Tensor]] = []  # (x, version, grad, z) in the scope

    @property
    def rank(self) -> int:
        return int(self.Bt.shape[0] if self.int8 else self.B.shape[1])

    @property
    def n(self) -> int:
        return int(self.Bt.shape[1] if self.int8 else self.B.shape[0])

    def numel(self) -> int:
        return self.n * self.rank

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        return self.Bt(x) if self.int8 else x @ self.B

    def message(self, x: torch.Tensor) -> torch.Tensor:
        """``z = Bᵀ x`` for every token (x: (..., n) -> (..., k)); inside an open scope, reused for the same
        unchanged input."""
        if torch.compiler.is_compiling() or not self._scopes:
            return self._product(x)
        version = -1 if x.is_inference() else x._version  # inference tensors keep no version counter
        grad = torch.is_grad_enabled()
        for seen, seen_version, seen_grad, z in self._seen:
            if seen is x and seen_version == version and seen_grad == grad:
                return z
        z = self._product(x)  # (..., k)
        self._seen.append((x, version, grad, z))
        return z

    def open_scope(self) -> None:
        self._scopes += 1

    def close_scope(self) -> None:
        self._scopes = max(self._scopes - 1, 0)
        if not self._scopes:
            self._seen.clear()

    def forget(self) -> None:
        """Drop every message and scope (after an interrupted forward)."""
        self._scopes = 0
        self._seen.clear()

    def extra_repr(self) -> str:
        return f"group={self.group_id!r}, n={self.n}, k={self.rank}, readers={self.readers}"

    def _apply(self, fn, recurse=True):  # dtype/device changes invalidate held messages
        self._seen.clear()
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
        # part i takes the message of part first_reader[i] (itself unless an earlier part has the same basis)
        self.first_reader = tuple(next(j for j in range(i + 1) if bases[j] is bases[i]) for i in range(len(bases)))
        first = bases[0].B
        self.A = nn.ParameterList(
            [
                nn.Parameter(torch.empty(m, b.rank, dtype=first.dtype, device=first.device))
                for m, b in zip(part_rows, bases, strict=True)
            ]
        )
        self.int8 = False  # True: each A is an int8 factor (ngc.modules.int8)
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
        if self.int8:
            W = torch.cat([A.dequantize() @ b.Bt.dequantize() for A, b in zip(self.A, self.bases, strict=True)])
        else:
            W = torch.cat([A @ basis.B.T for A, basis in zip(self.A, self.bases, strict=True)], dim=0)
        return W if self.output_index is None else W.index_select(0, self.output_index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        messages: list[torch.Tensor] = []
        for basis, first in zip(self.bases, self.first_reader, strict=True):
            messages.append(basis.message(x) if first == len(messages) else messages[first])
        if self.int8:
            parts = [A(z) for z, A in zip(messages, self.A, strict=True)]  # F.linear through torchao
        else:
            parts = [z @ A.T for z, A in zip(messages, self.A, strict=True)]  # (..., m_i) each
        y = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        if self.output_index is not None:
            y = y.index_select(-1, self.output_index)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        ranks = ", ".join(f"{r}:k={b.rank}" for r, b in zip(self.roles, self.bases, strict=True))
        return f"in={self.in_features}, out={self.out_features}, {ranks}, bias={self.bias is not None}"


class _MessageScope:
    """Forward hooks of a parent module: its shared bases keep messages only during the parent's own call."""

    def __init__(self, bases: Sequence[GroupBasis]) -> None:
        self.bases = tuple(bases)

    def __call__(self, module: nn.Module, args: tuple) -> None:
        if not torch.compiler.is_compiling():
            for basis in self.bases:
                basis.open_scope()

    def close(self, module: nn.Module, args: tuple, output: object) -> None:
        if not torch.compiler.is_compiling():
            for basis in self.bases:
                basis.close_scope()


def _sibling_bases(parent: nn.Module) -> list[GroupBasis]:
    """Bases read by at least two of ``parent``'s direct children."""
    readers: dict[int, tuple[GroupBasis, set[str]]] = {}
    for name, child in parent.named_children():
        if isinstance(child, FactorizedLinear):
            for basis in child.bases:
                readers.setdefault(id(basis), (basis, set()))[1].add(name)
    return [basis for basis, names in readers.values() if len(names) > 1]


def share_messages(model: nn.Module) -> int:
    """Give every module whose direct children share a basis a message scope (once; refreshed when called
    again after more modules were replaced). Returns the number of parents with a scope."""
    count = 0
    for parent in model.modules():
        bases = _sibling_bases(parent)
        existing = [hook for hook in parent._forward_pre_hooks.values() if isinstance(hook, _MessageScope)]
        if existing:
            existing[0].bases = tuple(bases)
        elif bases:
            scope = _MessageScope(bases)
            parent.register_forward_pre_hook(scope)
            parent.register_forward_hook(scope.close, always_call=True)
        count += bool(bases)
    return count
