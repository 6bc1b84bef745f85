"""Safe, atomic checkpoint I/O.

* Writes go to a temporary file in the same directory, are fsync'ed, then renamed over the target, so a
  crash never leaves a half-written file under the final name.
* Weights are stored as safetensors; anything else is read with ``torch.load(weights_only=True)``.
  A file that ``weights_only`` refuses is only read as a pickle when the caller passes ``trust_pickle=True``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "atomic_write",
    "atomic_save",
    "atomic_save_json",
    "save_safetensors",
    "load_safetensors",
    "safe_torch_load",
    "CheckpointError",
]


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, truncated or of an unexpected format."""


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is fsync'ed and renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        with contextlib.suppress(OSError):  # make the rename itself durable
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file, then rename."""
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def atomic_save_json(obj: Any, path: str | os.PathLike) -> Path:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return Path(path)


def save_safetensors(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> Path:
    from safetensors.torch import save_file

    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_write(path) as tmp:
        save_file(clean, str(tmp), metadata=metadata)
    return Path(path)


def load_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Weights file {path} does not exist.")
    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file (corrupt or truncated?): {exc}") from exc


def safe_torch_load(path: str | os.PathLike, *, trust_pickle: bool = False, map_location: Any = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``; a refused pickle needs ``trust_pickle=True``.

    Raises :class:`CheckpointError` for a missing, truncated or corrupt file, with one clear sentence.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"Checkpoint {path} is empty (0 bytes); it was probably cut off while being written.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        msg = str(exc)
        refused = "weights_only" in msg or "Unsupported global" in msg or "WeightsUnpickler" in msg
        if not refused:
            raise CheckpointError(
                f"Checkpoint {path} could not be read (corrupt or truncated?): {type(exc).__name__}: {msg.splitlines()[0] if msg else ''}"
            ) from exc
        if not trust_pickle:
            raise CheckpointError(
                f"Checkpoint {path} contains pickled Python objects that torch.load(weights_only=True) refuses; "
                "load it only if you trust its source, by passing trust_pickle=True (--trust-pickle on the command line)."
            ) from exc
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise CheckpointError(
            f"Checkpoint {path} could not be read (corrupt or truncated?): {type(exc).__name__}: {exc}"
        ) from exc
