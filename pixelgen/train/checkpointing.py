"""Training checkpoints: RNG capture, atomic writes, ``latest`` plus kept snapshots.

Layout under ``<out_dir>/checkpoints``::

    latest.pt            the newest full training state (always loadable: written to a temp file, then renamed)
    step_0100000.pt      kept snapshots (every ``keep_every`` steps)

Everything in a checkpoint is plain data (tensors, numbers, strings, lists, dicts), so it loads with
``torch.load(weights_only=True)``; NumPy's RNG state is stored as a tensor for that reason.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..utils.io import CheckpointError, atomic_save, atomic_write, safe_torch_load

__all__ = [
    "capture_rng_state",
    "restore_rng_state",
    "CheckpointManager",
    "CHECKPOINT_FORMAT",
    "load_training_checkpoint",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "pixelgen-train-v1"


def capture_rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch CPU and CUDA generator states, as plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        if len(state["cuda"]) != torch.cuda.device_count():
            log.warning(
                "The checkpoint holds CUDA RNG states for %d devices but %d are visible; CUDA RNG not restored.",
                len(state["cuda"]),
                torch.cuda.device_count(),
            )
        else:
            torch.cuda.set_rng_state_all(state["cuda"])


def load_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint written by :class:`CheckpointManager` (clear error when it is not one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "latest.pt" if (path / "checkpoints").is_dir() else path / "latest.pt"
    state = safe_torch_load(
        path, consent="pixelgen's own checkpoints hold only tensors and plain values, so it was not written by pixelgen"
    )
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a pixelgen training checkpoint (no format tag {CHECKPOINT_FORMAT!r}).")
    return state


class CheckpointManager:
    """Writes and finds training checkpoints in ``<out_dir>/checkpoints`` (rank 0 writes; everyone may read)."""

    def __init__(self, out_dir: str | os.PathLike):
        self.dir = Path(out_dir) / "checkpoints"

    @property
    def latest(self) -> Path:
        return self.dir / "latest.pt"

    def snapshot_path(self, step: int) -> Path:
        return self.dir / f"step_{step:07d}.pt"

    def save(self, state: dict[str, Any], *, keep: bool = False) -> Path:
        """Atomically replace ``latest.pt`` with ``state``; with ``keep`` also keep a numbered copy."""
        state = {"format": CHECKPOINT_FORMAT, **state}
        atomic_save(state, self.latest)
        if keep:
            with atomic_write(self.snapshot_path(int(state["step"])), size_hint=self.latest.stat().st_size) as tmp:
                shutil.copyfile(self.latest, tmp)
        return self.latest

    def find_resume(self) -> Path | None:
        return self.latest if self.latest.is_file() else None
