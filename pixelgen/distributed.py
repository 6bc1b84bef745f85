"""Rank, world size, barriers and timeouts: the one place that talks to ``torch.distributed``.

``torchrun --nproc_per_node=N ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`setup_distributed` reads them and starts the process group (NCCL on CUDA, gloo on CPU)
with a configurable timeout. Without them the run is a single process and nothing is initialised, and every
helper here is a cheap no-op.

A rank that stops answering (a hung data loader, a dead GPU, a frozen node) would otherwise hold the others
in a collective until the timeout and then end them with a backend error that names no one. Each rank
therefore publishes how far it got (:class:`ProgressBeacon`, a background thread writing to the process
group's store every few seconds, never on the training step's path); when a collective fails,
:func:`explain_collective_failure` reads the others' progress and names the rank(s) that fell behind, in
one sentence that every rank prints before it exits.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "RankStoppedAnswering",
    "ProgressBeacon",
    "setup_distributed",
    "training_device",
    "cleanup_distributed",
    "is_distributed",
    "barrier",
    "all_gather_objects",
    "all_gather_ints",
    "broadcast_object",
    "any_true",
    "all_reduce_mean_",
    "all_reduce_min_",
    "explain_collective_failure",
    "DEFAULT_TIMEOUT_MINUTES",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MINUTES = 10.0
_KEY = "pixelgen/progress/"
_STOPPED_KEY = "pixelgen/stopped"


class RankStoppedAnswering(RuntimeError):
    """A collective failed because a rank stopped answering; the message names that rank."""


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False
    timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


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


def setup_distributed(device: str | None = None, *, timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> DistInfo:
    """Read the torchrun environment, pick the device (:func:`training_device`) and start the process group
    when there are several ranks; a collective that waits longer than ``timeout_minutes`` fails."""
    if not timeout_minutes > 0:
        raise ValueError(f"The process-group timeout must be a positive number of minutes, got {timeout_minutes}.")
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
            backend=backend,
            rank=rank,
            world_size=world,
            device_id=dev if dev.type == "cuda" else None,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
        initialised_here = True
    return DistInfo(
        rank=rank,
        world_size=world,
        local_rank=local,
        device=dev,
        initialised_here=initialised_here,
        timeout_minutes=float(timeout_minutes),
    )


def cleanup_distributed(info: DistInfo) -> None:
    if info.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-element list without a process group)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_gather_ints(value: int, device: torch.device) -> list[int]:
    """Every rank's ``value``, in rank order, through one small all-reduce on ``device`` (``all_gather_objects``
    pickles and takes a host sync per rank: too slow for every micro-batch)."""
    if not is_distributed():
        return [value]
    slots = torch.zeros(dist.get_world_size(), dtype=torch.int64, device=device)
    slots[dist.get_rank()] = value
    dist.all_reduce(slots)
    return slots.tolist()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_true(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on any rank (so all ranks take the same branch)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_reduce_mean_(t: torch.Tensor) -> torch.Tensor:
    """In place: the mean of ``t`` over ranks, left on the device (no host read)."""
    if is_distributed():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


def all_reduce_min_(t: torch.Tensor) -> torch.Tensor:
    """In place: the element-wise minimum over ranks, left on the device (no host read)."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


# -- naming the rank that stopped answering --------------------------------------------------------------
def _store():
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # private API; without it the message cannot name the rank
        return None


class ProgressBeacon:
    """Publishes this rank's progress (a counter the trainer advances at each phase of a step, and the step)
    to the process group's store from a background thread, so a rank whose collective failed can tell which
    rank fell behind. Costs the training step one integer increment per phase."""

    def __init__(self, info: DistInfo, interval_s: float = 2.0):
        self.info = info
        self.ticks = 0
        self.step = 0
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._store = _store() if info.distributed and is_distributed() else None

    def tick(self, step: int | None = None) -> None:
        self.ticks += 1
        if step is not None:
            self.step = step

    def publish(self) -> None:
        if self._store is not None:
            try:
                self._store.set(f"{_KEY}{self.info.rank}", f"{self.ticks} {self.step} {time.time():.3f}")
            except Exception:  # the store going away must never end the run from this thread
                pass

    def start(self) -> ProgressBeacon:
        if self._store is not None and self._thread is None:
            self.publish()
            self._thread = threading.Thread(target=self._run, name="pixelgen-progress", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.publish()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval + 1)
            self._thread = None


def looks_like_collective_failure(exc: BaseException) -> bool:
    """A timeout or a lost peer reported by gloo/NCCL (their errors are RuntimeErrors with these words)."""
    if not is_distributed():
        return False
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    words = ("timed out", "timeout", "connection closed", "connection reset", "broken pipe", "nccl", "gloo")
    return isinstance(exc, RuntimeError) and any(w in text for w in words)


def explain_collective_failure(exc: BaseException, beacon: ProgressBeacon) -> RankStoppedAnswering:
    """One sentence naming the rank(s) that stopped answering, from the progress the ranks published."""
    info, store = beacon.info, beacon._store
    beacon.publish()
    minutes = info.timeout_minutes
    if store is None:
        return RankStoppedAnswering(
            f"A rank stopped answering (rank {info.rank} waited {minutes:g} minutes in a collective at step "
            f"{beacon.step}); stopping every rank."
        )
    try:
        store.set_timeout(datetime.timedelta(seconds=5))
        already = store.get(_STOPPED_KEY).decode() if store.check([_STOPPED_KEY]) else None
    except Exception:
        already = None
    if already:  # another rank already named the culprit: repeat its sentence
        return RankStoppedAnswering(already)
    progress: dict[int, tuple[int, int, float]] = {}
    for r in range(info.world_size):
        try:
            if store.check([f"{_KEY}{r}"]):
                ticks, step, seen = store.get(f"{_KEY}{r}").decode().split()
                progress[r] = (int(ticks), int(step), float(seen))
        except Exception:
            continue
    others = {r: p for r, p in progress.items() if r != info.rank}
    silent = [r for r in range(info.world_size) if r != info.rank and r not in progress]
    if others and not silent:
        lowest = min(p[0] for p in others.values())
        behind = [r for r, p in sorted(others.items()) if p[0] == lowest and p[0] <= beacon.ticks]
    else:
        behind = silent
    if not behind:
        behind = sorted(others) or [r for r in range(info.world_size) if r != info.rank]
    names = ", ".join(str(r) for r in behind)
    who = f"Rank {names}" if len(behind) == 1 else f"Ranks {names}"
    last = sorted({others[r][1] for r in behind if r in others})
    after = f" after step {', '.join(map(str, last))}" if last else " before reporting any progress"
    sentence = (
        f"{who} stopped answering{after}; rank {info.rank} waited {minutes:g} minutes (dist_timeout_minutes) for "
        f"{'it' if len(behind) == 1 else 'them'} in a collective, so every rank stops."
    )
    try:
        store.set(_STOPPED_KEY, sentence)
    except Exception:
        pass
    return RankStoppedAnswering(sentence)
