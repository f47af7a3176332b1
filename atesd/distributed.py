"""Data-parallel distillation under torchrun: every rank samples its own shard of problems, gradients
and statistics are averaged across ranks, and one alpha (rank 0's decision) is used everywhere.

Gradients are averaged by hand after backward (what DDP's reducer does, without wrapping the model:
the engine reads the decoder and output head of the bare model). With identical initial weights and
identical averaged gradients, every rank's optimiser takes the same step, so the weights stay equal.
`Dist.single()` is the one-process stand-in; nothing here is used unless WORLD_SIZE > 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    """This process's place in the group, and the collectives the engine and the run loop need."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def single(cls) -> Dist:
        return cls()

    @classmethod
    def from_env(cls, backend: str | None = None) -> Dist:
        """Join the torchrun group (gloo on CPU, nccl on GPU by default); a single process without one."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls.single()
        if not dist.is_initialized():
            backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
            dist.init_process_group(backend=backend)
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size())

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def average_gradients(self, params: list[torch.Tensor]) -> None:
        """Replace every gradient by its mean over ranks (one flat all-reduce; missing grads count as 0)."""
        if not self.active:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def all_true(self, flag: bool) -> bool:
        """True only if `flag` holds on every rank (a non-finite loss anywhere skips the step everywhere)."""
        if not self.active:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def mean(self, values: list[float]) -> list[float]:
        """Element-wise mean over ranks of a list of floats (NaN stays NaN)."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return (t / self.world_size).tolist()

    def broadcast_float(self, value: float, src: int = 0) -> float:
        """Rank `src`'s value on every rank."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.broadcast(t, src=src)
        return float(t.item())

    def gather_objects(self, obj: object) -> list:
        """Every rank's `obj`, in rank order, on every rank (picklable objects; `[obj]` in one process)."""
        if not self.active:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: object, src: int = 0) -> object:
        """Rank `src`'s `obj` on every rank (a picklable object)."""
        if not self.active:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


class SharedDecisions:
    """Rank 0's controller decides; every rank acts with the alpha it broadcasts.

    Wraps any controller (the `controllers.base.Controller` protocol). On rank 0 it passes everything
    through and broadcasts each action; on the other ranks it only receives the broadcast alpha, and
    learns, saves and reports nothing (the envs see identical averaged statistics on every rank).
    """

    def __init__(self, controller, dist: Dist) -> None:
        self.controller, self.dist = controller, dist

    def reset(self, seed: int | None = None, info: dict | None = None) -> None:
        if self.dist.is_main:
            self.controller.reset(seed=seed, info=info)

    def act(self, obs):
        import numpy as np

        alpha = float(self.controller.act(obs)[0]) if self.dist.is_main else 0.0
        return np.array([self.dist.broadcast_float(alpha)], dtype=np.float32)

    def observe(self, obs, action, reward, next_obs, terminated, truncated, info) -> dict[str, float]:
        if not self.dist.is_main:
            return {}
        return self.controller.observe(obs, action, reward, next_obs, terminated, truncated, info)

    def pop_credits(self) -> list[dict[str, float]]:
        pop = getattr(self.controller, "pop_credits", None)
        return pop() if pop is not None and self.dist.is_main else []

    def state_dict(self) -> dict:
        return self.controller.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.controller.load_state_dict(state)
