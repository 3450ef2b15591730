"""Several processes on torch.distributed (``torchrun`` / ``accelerate launch``): gloo on the CPU, NCCL on CUDA.

Each rank calibrates its share of the windows (``windows[rank::world]``); the moments of every input are summed
over ranks before any fit; the groups are fitted round-robin (group ``i`` by rank ``i % world``) and each fit
is broadcast from its owner, so every rank swaps the same factors and produces the next layer's inputs for
its windows. Sums are taken in float64, so the result equals one process's to rounding.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ngc.calib.moments import InputMoments
from ngc.errors import UsageError
from ngc.fit.closed_form import GroupFit


def launched() -> bool:
    """True in a process started by torchrun or accelerate launch (the environment names a world)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch_rank() -> int:
    """This process's rank as the launcher set it (0 when not launched): known before the group is joined."""
    return int(os.environ.get("RANK", "0"))


@dataclass(frozen=True)
class World:
    """This process's place among the ranks (a single process is rank 0 of 1)."""

    rank: int = 0
    size: int = 1

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, windows: torch.Tensor) -> torch.Tensor:
        """This rank's windows: every ``size``-th row from ``rank``."""
        return windows[self.rank :: self.size] if self.active else windows

    def owner(self, index: int) -> int:
        return index % self.size

    def all_reduce(self, moments: InputMoments) -> None:
        """Sum ``moments`` over ranks in place (accumulators and token count)."""
        if not self.active:
            return
        for tensor in moments.tensors():
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tokens = torch.tensor([moments.tokens], dtype=torch.float64, device=moments.second.device)
        dist.all_reduce(tokens, op=dist.ReduceOp.SUM)
        moments.tokens = int(tokens.item())

    def broadcast_fit(self, fit: GroupFit | None, owner: int, shapes: tuple[list[int], int, int, int]) -> GroupFit:
        """The owner's fit on every rank. ``shapes``: (member row counts, n, rank, number of singular values)."""
        if not self.active:
            assert fit is not None
            return fit
        rows, n, k, count = shapes
        device = _device()
        if self.rank == owner:
            assert fit is not None
            # contiguous: solvers return column-major results, and a collective sends the storage as it lies
            tensors = [t.to(device).contiguous() for t in (*fit.A, fit.B, fit.sigma)]
            # ridge, condition (NaN: none), eigenvalues floored, factorisation (0 none, 1 cholesky, 2 eigh)
            kind = {None: 0.0, "cholesky": 1.0, "eigh": 2.0}[fit.factorisation]
            condition = math.nan if fit.condition is None else fit.condition
            ridge = torch.tensor([fit.ridge, condition, fit.floored, kind], dtype=torch.float64, device=device)
        else:
            tensors = [torch.empty(m, k, dtype=torch.float64, device=device) for m in rows]
            tensors += [torch.empty(n, k, dtype=torch.float64, device=device)]
            tensors += [torch.empty(count, dtype=torch.float64, device=device)]
            ridge = torch.empty(4, dtype=torch.float64, device=device)
        for tensor in (*tensors, ridge):
            dist.broadcast(tensor, src=owner)
        *A, B, sigma = tensors
        value, condition, floored, kind = ridge.tolist()
        factorisation = {0: None, 1: "cholesky", 2: "eigh"}[int(kind)]
        return GroupFit(
            tuple(A), B, sigma, value, factorisation, None if math.isnan(condition) else condition, int(floored)
        )

    def agree(self, what: str, payload: dict) -> None:
        """Refuse to go on when the ranks were started with different arguments."""
        if not self.active:
            return
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).digest()
        mine = torch.tensor(list(digest), dtype=torch.float64, device=_device())
        first = mine.clone()
        dist.broadcast(first, src=0)
        same = torch.tensor([float(torch.equal(mine, first))], device=_device())
        dist.all_reduce(same, op=dist.ReduceOp.MIN)
        if same.item() < 1:
            raise UsageError(
                f"the ranks were started with different {what}",
                hint="give every rank the same command line (torchrun passes one to all)",
            )

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def _device() -> torch.device:
    """Where collectives run: the rank's GPU under NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_world(device: str) -> World:
    """Join the process group the launcher describes (once); a plain run is a world of one."""
    if not launched():
        return World()
    if not dist.is_initialized():
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=30))
    return World(dist.get_rank(), dist.get_world_size())


def rank_device(device: str, world: World) -> str:
    """Under several processes on CUDA each rank uses its own GPU (``LOCAL_RANK``)."""
    if world.active and torch.device(device).type == "cuda" and torch.device(device).index is None:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device
