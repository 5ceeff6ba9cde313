"""Multi-process training through torchrun: DistributedDataParallel (or FSDP2) on torch.distributed.

torchrun sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT; without them we are one process.
Backend: nccl for CUDA, gloo for CPU (so `torchrun --nproc_per_node=2` works on a laptop and in CI).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def env_info() -> DistInfo:
    """This process's place as torchrun set it (a one-process DistInfo without torchrun), before any group."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), int(os.environ["WORLD_SIZE"]))


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group if torchrun started us; one-process DistInfo otherwise."""
    info = env_info()
    if not info.enabled:
        return info
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return info


def local_device(device: torch.device, info: DistInfo) -> torch.device:
    """Each process on a multi-GPU machine takes the GPU of its local rank."""
    if device.type == "cuda" and info.enabled:
        return torch.device("cuda", info.local_rank)
    return device


def wrap_model(model: torch.nn.Module, info: DistInfo, device: torch.device, fsdp: bool) -> torch.nn.Module:
    """DDP (default) or FSDP2 `fully_shard` (each block, then the root). Returns the module to call."""
    if not info.enabled:
        return model
    if fsdp:
        try:
            from torch.distributed.fsdp import fully_shard
        except ImportError:  # torch < 2.6
            from torch.distributed._composable.fsdp import fully_shard
        from torch.distributed.device_mesh import init_device_mesh

        # the mesh on the model's device: fully_shard's default is the GPU wherever torch sees one, so a CPU run
        # (gloo) on a machine with fewer GPUs than ranks would fail to set rank 1's GPU
        mesh = init_device_mesh(device.type, (info.world,))
        for block in model.transformer.h:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t = t / info.world
    return t


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
