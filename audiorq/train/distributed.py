"""Process-group glue for torchrun: where this process sits, joining the group, and the few collectives."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
import torch.distributed as dist

from audiorq.device import resolve_device


@dataclasses.dataclass(frozen=True)
class DistContext:
    """Where this process sits in a (possibly single-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # A gloo group beside an NCCL one: flags agreed on the host never wait for the GPU's queued work.
    control_group: Any = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> tuple[DistContext, torch.device, bool]:
    """Read torchrun's environment, pick the device, join the process group if world size > 1.

    Returns (context, device, whether this call created the process group).
    """
    ctx = DistContext(
        rank=int(os.environ.get("RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    device = resolve_device(device_name, ctx.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = False
    if ctx.distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://")
        created = True
    if ctx.distributed and dist.get_backend() != "gloo":
        ctx = dataclasses.replace(ctx, control_group=dist.new_group(backend="gloo"))  # every rank calls this
    return ctx, device, created


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op in a single process)."""
    if ctx.distributed:
        dist.barrier()


def agree_any(ctx: DistContext, device: torch.device, *flags: bool) -> tuple[bool, ...]:
    """Each flag OR-ed over all ranks, so every rank takes the same branch; one tiny all-reduce.

    With NCCL it goes through the gloo `control_group` on the host: reading an NCCL result back would wait
    for every kernel queued on the GPU, a stall on every step.
    """
    if not ctx.distributed:
        return tuple(flags)
    on_host = ctx.control_group is not None
    values = torch.tensor(flags, dtype=torch.int32, device="cpu" if on_host else device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX, group=ctx.control_group)
    return tuple(bool(v) for v in values.tolist())


def broadcast_floats(ctx: DistContext, device: torch.device, values: list[float]) -> list[float]:
    """Rank 0's `values` on every rank (float64)."""
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return t.cpu().tolist()


def gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out
