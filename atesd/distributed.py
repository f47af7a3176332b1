"""Data-parallel distillation under torchrun: every rank samples its own shard of problems, gradients
and statistics are averaged across ranks, and one alpha (rank 0's decision) is used everywhere.

Gradients are averaged by hand after backward (what DDP's reducer does, without wrapping the model:
the engine reads the decoder and output head of the bare model). With identical initial weights and
identical averaged gradients, every rank's optimiser takes the same step, so the weights stay equal.
`Dist.single()` is the one-process stand-in; nothing here is used unless WORLD_SIZE > 1.

For a full fine-tune too large to replicate, `shard_layers` puts each decoder layer under FSDP2
(`torch.distributed.fsdp.fully_shard`): its parameters, gradients and optimiser state are split
across ranks, gathered for its forward and backward, and its gradients averaged by a reduce-scatter.
The embeddings, final norm and output head (which the engine reads directly) stay replicated and are
averaged by hand as above. `gathered` holds the layers whole while one rank samples on its own (its
rollout lengths differ from the other ranks', so per-forward collectives would deadlock), and
`gather_state` / `scatter_state` (torch.distributed.checkpoint) move whole tensors between the shards
and rank 0, which alone holds them, for checkpoints and the env's reset snapshot. A model handed over
on the CPU reaches the device one layer at a time as it is sharded, and `sharded_copy` makes the
frozen teacher's copy the same way, so no device holds two whole models. Ranks other than rank 0 may
hand over a skeleton on the meta device instead (the builder's `load_on_rank0`): with `fill`, rank 0's
weights reach their shards a layer at a time as each is sharded, so only rank 0 reads the checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import itertools
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from atesd.models import base_model


def local_cuda_index() -> int:
    """This torchrun process's GPU: cuda:LOCAL_RANK where it sees them all; cuda:0 where the launcher
    shows each process its own GPU only (CUDA_VISIBLE_DEVICES per rank, as under some Slurm setups:
    set_device(LOCAL_RANK) failed there). ValueError in one line where it sees some but too few."""
    local, count = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    if local < count:
        return local
    shown = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if count == 1 and len(shown) == 1:  # the launcher gave this process its own GPU
        return 0
    raise ValueError(
        f"torchrun's LOCAL_RANK is {local}, but this process sees {count} CUDA devices: start at most "
        f"{count} processes per node, or show each process its own GPU (CUDA_VISIBLE_DEVICES=<one id>)"
    )


TIMEOUT_ENV = "ATESD_DIST_TIMEOUT"  # seconds a collective waits for the slowest rank (torch's default: 1800)


def group_timeout() -> timedelta | None:
    """The process group's timeout from `ATESD_DIST_TIMEOUT` (seconds; None where it is unset: torch's
    default, 30 minutes). Every rank waits in a collective at most this long for the others: for rank 0
    loading a checkpoint the others do not read, or gathering and writing a whole run checkpoint.
    ValueError in one line for a value that is not a positive number of seconds."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {text!r}")
    return timedelta(seconds=seconds)


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
        """Join the torchrun group; a single process without one.

        On GPUs each rank first takes its own device (`LOCAL_RANK`), so NCCL, the object collectives
        and FSDP's shards land on it rather than all on cuda:0; the group has gloo for CPU tensors (the
        small statistics and flags exchanged here) and NCCL for CUDA tensors. gloo alone on CPU.
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls.single()
        if not dist.is_initialized():
            timeout = group_timeout()  # said before the group is joined: every rank reads it the same
            kwargs = {}
            if torch.cuda.is_available():
                local = torch.device("cuda", local_cuda_index())
                torch.cuda.set_device(local)
                kwargs = {"backend": backend or "cpu:gloo,cuda:nccl", "device_id": local}
            else:
                kwargs = {"backend": backend or "gloo"}
            if timeout is not None:
                kwargs["timeout"] = timeout
            dist.init_process_group(**kwargs)
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size())

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def average_gradients(self, params: list[torch.Tensor]) -> None:
        """Replace every gradient by its mean over ranks (one flat all-reduce per dtype and device;
        missing grads count as 0). Sharded (FSDP) parameters are skipped: their reduce-scatter has
        averaged them already."""
        params = [p for p in params if not is_sharded(p)]
        if not self.active or not params:
            return
        buckets: dict[tuple, list[torch.Tensor]] = {}  # a bf16 model may train fp32 routers beside
        for p in params:
            buckets.setdefault((p.dtype, p.device), []).append(p)
        for bucket in buckets.values():
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in bucket]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= self.world_size
            offset = 0
            for p, g in zip(bucket, grads):
                n = g.numel()
                p.grad = flat[offset : offset + n].view_as(p).clone()
                offset += n

    def token_share(self, n: int) -> tuple[float, int]:
        """(world * n / N, N) for this rank's n of all ranks' N tokens: a rank's token mean times its
        share, averaged over ranks, is the mean over all N tokens (a loss so scaled has the gradient
        of the pooled batch once gradients are averaged). (1.0, n) in one process."""
        if not self.active:
            return 1.0, n
        total = round(self.mean([float(n)])[0] * self.world_size)
        return (self.world_size * n / total if total else 1.0), total

    def clip_grad_norm(self, params: list[torch.Tensor], max_norm: float) -> float:
        """`torch.nn.utils.clip_grad_norm_` over parameters of which some may be sharded: the norm of the
        whole gradient (each shard counted once, replicated gradients once) and the same scale on every
        rank. Returns the norm before clipping (inf or NaN when the gradient is not finite)."""
        grads = [p.grad for p in params if p.grad is not None]
        sharded = [g.to_local() for g in grads if is_sharded(g)]
        if not sharded:
            return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        device = sharded[0].device
        sq = torch.zeros((), dtype=torch.float64, device=device)
        for g in sharded:
            sq += g.detach().double().pow(2).sum()
        dist.all_reduce(sq, op=dist.ReduceOp.SUM)  # disjoint shards: their squares add up
        for g in grads:
            if not is_sharded(g):  # identical on every rank (averaged): counted once
                sq += g.detach().double().pow(2).sum().to(device)
        norm = float(sq.sqrt())
        scale = max_norm / (norm + 1e-6)
        if scale < 1.0:
            for g in grads:
                g.mul_(scale)
        return norm

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
        """Leave the group together, and only after the garbage is collected: FSDP's module and hook
        cycles keep tensors that gloo's worker threads may still reference, and freeing them during
        interpreter shutdown instead aborted a rank in about one exit in ten (on CPU, `terminate called
        without an active exception`). Drop your own references to the model before calling this."""
        if self.active and dist.is_initialized():
            gc.collect()
            dist.barrier()
            dist.destroy_process_group()


# ---- FSDP2 ---------------------------------------------------------------------------------------
def is_sharded(t: torch.Tensor) -> bool:
    """A DTensor (a parameter or gradient split across ranks by FSDP)."""
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder's block list of an HF causal LM (`model.get_decoder().layers`)."""
    base = base_model(model)
    layers = getattr(base.get_decoder(), "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ValueError(
            f"FSDP shards the decoder's `layers`, and {type(base).__name__}.get_decoder() has none"
        )
    return layers


def fsdp_modules(model: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def shard_layers(
    model: nn.Module, dist_: Dist, device: str | torch.device | None = None, fill: bool = False
) -> nn.Module:
    """Put every decoder layer of `model` under FSDP2 over all ranks (in place; returns `model`), and
    everything else of it on `device` (default: where its parameters are). A layer still on the CPU is
    moved to `device` by FSDP as it is sharded, one layer at a time, so sharding a model handed over on
    the CPU never puts it whole on the device.

    `fill`: some ranks hand over a skeleton on the meta device (`atesd.models.meta_skeleton`), and
    rank 0's weights fill every rank's as each layer is sharded (then the replicated rest), so no rank
    holds more than one whole layer beyond what sharding holds anyway. Every rank must pass the same
    `fill`; rank 0's model must hold the weights."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    mesh = _mesh(device, dist_)
    layers = decoder_layers(model)
    for layer in layers:
        _shard_filled(layer, mesh, device, fill)
    _place(model, device, skip=layers)  # the replicated rest (FSDP's modules take `to`, keep their shards)
    if fill:
        _fill_replicated(model, skip=layers)
    return model


def sharded_copy(
    model: nn.Module, dist_: Dist, device: str | torch.device | None = None, fill: bool = False
) -> nn.Module:
    """A frozen copy of `model` in eval mode, sharded as `shard_layers` shards (the copy's replicated
    parts on `device`), made one decoder layer at a time: each layer is copied whole and sharded before
    the next is copied, so neither the host nor the device ever holds a second whole model (a deep copy
    of the whole model, then sharding, would). `model` is left as it was; it must not be sharded yet
    (FSDP's modules cannot be deep-copied). `fill`: as `shard_layers`'s (rank 0's weights fill the
    copies of other ranks' skeletons, a layer at a time)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    mesh = _mesh(device, dist_)
    layers = decoder_layers(model)
    if any(is_sharded(p) for p in layers.parameters()):
        raise ValueError("sharded_copy copies a model before it is sharded: its layers are sharded already")
    copied = nn.ModuleList()
    out = copy.deepcopy(model, memo={id(layers): copied})  # everything but the layers, ties kept
    _place(out.eval().requires_grad_(False), device)  # its embeddings and head leave the host at once
    if fill:
        _fill_replicated(out, skip=copied)  # no layer in it yet
    shared = {id(model.config): out.config}  # the layers' config is the copy's, as in the model
    for layer in layers:
        one = copy.deepcopy(layer, memo=dict(shared)).eval().requires_grad_(False)  # before FSDP's flags
        _shard_filled(one, mesh, device, fill)
        copied.append(one)
    return out


def on_meta(model: nn.Module) -> bool:
    """Whether `model` has tensors on the meta device (`atesd.models.meta_skeleton`'s: no weights)."""
    return any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers()))


def _place(module: nn.Module, device: torch.device, skip: nn.Module | None = None) -> nn.Module:
    """`module.to(device)`; a skeleton on the meta device gets uninitialised storage there instead
    (to be filled from rank 0), its tied parameters tied again (`to_empty` unties them), except in
    `skip` (layers placed and filled already)."""
    if not on_meta(module):
        return module.to(device)
    shared: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        shared.setdefault(id(p), []).append(name)
    placed = {id(m) for m in skip.modules()} if skip is not None else set()
    for m in module.modules():
        if id(m) not in placed:
            m.to_empty(device=device, recurse=False)
    for first, *rest in (names for names in shared.values() if len(names) > 1):
        for name in rest:
            owner, _, leaf = name.rpartition(".")
            setattr(module.get_submodule(owner), leaf, module.get_parameter(first))
    return module


def _shard_filled(layer: nn.Module, mesh, device: torch.device, fill: bool) -> None:
    """`_shard` one layer; with `fill`, then rank 0's weights (and buffers) into every rank's shards. Rank
    0's whole layer lives until its shards are filled: one layer at a time."""
    if not fill:
        _shard(layer, mesh)
        return
    whole = layer.state_dict() if dist.get_rank() == 0 else {}
    _shard(layer, mesh)
    _place(layer, device)  # a skeleton's shards get storage (FSDP sharded them on the meta device)
    for buffer in layer.buffers():
        dist.broadcast(buffer, src=0)
    scatter_state(layer, whole)


def _fill_replicated(model: nn.Module, skip: nn.Module) -> None:
    """Broadcast rank 0's parameters and buffers of `model` outside `skip` (the layers, filled as they
    are sharded) into every rank's: the replicated parts, and the buffers no state dict holds (rotary
    tables). Tied parameters once."""
    inside = {id(t) for t in itertools.chain(skip.parameters(), skip.buffers())}
    for t in itertools.chain(model.parameters(), model.buffers()):
        if id(t) not in inside:
            dist.broadcast(t.data, src=0)


def _shard(layer: nn.Module, mesh) -> None:
    """`fully_shard` one decoder layer, resharded after every forward. The layers are FSDP's roots (the
    model around them is not sharded), and FSDP's default keeps a root whole after its forward for the
    backward that usually follows: a frozen teacher, which has no backward, then stayed whole from its
    first scoring on. (The student's layers were switched to it already by `gathered` after its
    first rollout.) Each layer being a root, its all-gather is not prefetched during the previous
    layer's compute."""
    from torch.distributed.fsdp import fully_shard

    fully_shard(layer, mesh=mesh, reshard_after_forward=True)


def _mesh(device: torch.device, dist_: Dist):
    """The ranks' mesh on `device`'s kind; FSDP puts the shards on the current device of that kind, so
    a CUDA `device` must be the current one (Dist.from_env makes cuda:LOCAL_RANK current)."""
    from torch.distributed.device_mesh import init_device_mesh

    if device.type == "cuda" and device.index is not None and device.index != torch.cuda.current_device():
        raise ValueError(
            f"FSDP shards onto the current CUDA device (cuda:{torch.cuda.current_device()}), and the model "
            f"is meant for {device}: the layers and the replicated rest would land on different GPUs"
        )
    return init_device_mesh(device.type, (dist_.world_size,))


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """Hold every FSDP layer of `model` whole (one all-gather each, on every rank together) until the
    block ends, so forwards inside it need no collectives; no-op for an unsharded model."""
    modules = fsdp_modules(model)
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m in modules:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)


def gather_state(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> tuple[dict, dict]:
    """(model state, optimizer state) as whole CPU tensors on rank 0 and empty dicts on the other ranks
    (torch.distributed.checkpoint's full state dicts; the optimizer's keyed by parameter name). A
    collective: every rank calls it. Values may share memory with the live ones: copy to keep them."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    optim_state = {}
    # an optimiser that has not stepped yet stays `{}`: DCP would first "initialise" it with a step of
    # zero gradients, which advances its step count (and so its bias correction) by one
    if optimizer is not None and optimizer.state:
        optim_state = get_optimizer_state_dict(model, optimizer, options=options)
    return model_state, optim_state


def scatter_state(
    model: nn.Module,
    model_state: dict,
    optimizer: torch.optim.Optimizer | None = None,
    optim_state: dict | None = None,
) -> None:
    """Load `gather_state`'s output: rank 0 passes the whole tensors, which are broadcast and sharded
    into every rank's model (and optimizer); the other ranks' arguments are ignored. A collective."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    main = not dist.is_initialized() or dist.get_rank() == 0
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, model_state if main else {}, options=options)
    if optimizer is None:
        return
    stepped = [bool(optim_state)] if main else [None]
    if dist.is_initialized():
        dist.broadcast_object_list(stepped, src=0)  # rank 0's word: has the saved optimiser stepped?
    if stepped[0]:
        set_optimizer_state_dict(model, optimizer, optim_state if main else {}, options=options)
    else:
        optimizer.state.clear()  # as it was saved: not stepped yet
