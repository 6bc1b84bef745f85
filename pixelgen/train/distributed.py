"""torchrun-native process-group set-up, per-rank seeding and the few collectives the trainer needs.

``torchrun --nproc_per_node=N recipes/imagenet256.py ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup_distributed` reads them and starts the process group
(NCCL on CUDA, gloo on CPU). Without them the run is a single process and nothing is initialised.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "setup_distributed",
    "training_device",
    "cleanup_distributed",
    "seed_everything",
    "all_gather_objects",
    "all_gather_ints",
    "broadcast_object",
    "any_true",
    "barrier",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"Environment variable {name} must be an integer, got {value!r}.") from None


def training_device(device: str | None = None) -> torch.device:
    """This process's training device: None picks ``cuda:<LOCAL_RANK>`` when CUDA is available, else CPU;
    ``"cuda"`` without an index also means this rank's GPU; ``"cpu"`` or ``"cuda:N"`` are taken as given."""
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not kind.startswith("cuda"):
        return torch.device(kind)
    if not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for, but CUDA is not available on this machine.")
    return torch.device(kind if ":" in kind else f"cuda:{_env_int('LOCAL_RANK', 0)}")


def setup_distributed(device: str | None = None) -> DistInfo:
    """Read the torchrun environment, pick the device (:func:`training_device`) and start the process group
    when there are several ranks."""
    rank, world, local = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world} are inconsistent (need 0 <= RANK < WORLD_SIZE).")
    dev = training_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    initialised_here = False
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend, rank=rank, world_size=world, device_id=dev if dev.type == "cuda" else None
        )
        initialised_here = True
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev, initialised_here=initialised_here)


def cleanup_distributed(info: DistInfo) -> None:
    if info.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-element list without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_gather_ints(value: int, device: torch.device) -> list[int]:
    """Every rank's ``value``, in rank order, through one small all-reduce on ``device`` (``all_gather_objects``
    pickles and takes a host sync per rank: too slow for every micro-batch)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    slots = torch.zeros(dist.get_world_size(), dtype=torch.int64, device=device)
    slots[dist.get_rank()] = value
    dist.all_reduce(slots)
    return slots.tolist()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_true(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on any rank (so all ranks take the same branch)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
