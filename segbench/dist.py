"""torch.distributed helpers that are no-ops in a single process.

Under ``torchrun`` every rank runs the same jobs: training is data parallel and
evaluation shards the images over ranks, then sums metric states with one collective.
Only rank 0 writes records.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: str) -> None:
    """Join the process group torchrun describes in the environment (if any)."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not is_distributed():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend)
        if device.startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))


def all_reduce_sum(array: np.ndarray) -> np.ndarray:
    """Sum a numpy array over ranks (exact for integer arrays)."""
    if not is_distributed():
        return array
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().numpy()


def shard(count: int) -> range:
    """The indices of ``range(count)`` this rank handles: r, r + W, r + 2W, ..."""
    return range(rank(), count, world_size())


def gather_sharded(items: list) -> list:
    """Inverse of :func:`shard`: every rank's items (one per index it handled), back in
    index order on every rank. One ``all_gather_object``."""
    if not is_distributed():
        return items
    parts = [None] * world_size()
    dist.all_gather_object(parts, items)
    merged = [None] * sum(len(p) for p in parts)
    for r, part in enumerate(parts):
        merged[r::world_size()] = part
    return merged


def barrier() -> None:
    if is_distributed():
        dist.barrier()
