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
import re
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
        detail = str(exc).splitlines()[0].rstrip(".") if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable safetensors file, corrupt or truncated ({detail}).") from exc


_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL = 0x80


def _describe_foreign_file(head: bytes) -> str:
    """What a file that is not a torch checkpoint looks like, from its first bytes (for the error message)."""
    text = head.lstrip()
    if text[:1] in (b"{", b"["):
        return "it looks like a JSON file"
    if head.startswith(b"\x89PNG") or head.startswith(b"\xff\xd8\xff"):
        return "it looks like an image"
    if head.startswith(b"<"):
        return "it looks like an HTML or XML file (a failed download?)"
    if len(head) >= 8 and int.from_bytes(head[:8], "little") < len(head) * 2**20 and head[8:9] == b"{":
        return "it looks like a safetensors file (load it with load_safetensors / load_pretrained)"
    return "it is neither a zip-format nor a legacy PyTorch file"


def safe_torch_load(
    path: str | os.PathLike,
    *,
    trust_pickle: bool = False,
    map_location: Any = "cpu",
    consent: str = "if you trust its source, pass trust_pickle=True",
) -> Any:
    """``torch.load`` with ``weights_only=True``; a refused pickle needs ``trust_pickle=True``.

    Raises :class:`CheckpointError` with one sentence that tells apart a file that is not a checkpoint at all,
    a truncated or corrupt checkpoint, and a pickle that ``weights_only`` refuses (naming the refused global).
    ``consent`` ends the refusal: how the caller's user consents to unpickling, or why this caller never does.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"Checkpoint {path} is empty (0 bytes); it was probably cut off while being written.")
    with open(path, "rb") as handle:
        head = handle.read(64)
    if not head.startswith(_ZIP_MAGIC) and head[:1] != bytes([_PICKLE_PROTOCOL]):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: {_describe_foreign_file(head)}.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        msg = str(exc)
        refused = re.search(r"GLOBAL ([\w.]+)", msg)
        if refused is None:
            first = next((line for line in msg.splitlines() if line.strip()), "").split(". ")[0].rstrip(".")
            raise CheckpointError(
                f"Checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {first[:200]})."
            ) from exc
        if not trust_pickle:
            raise CheckpointError(
                f"Checkpoint {path} holds a pickled {refused.group(1)} that torch.load(weights_only=True) refuses "
                f"to run; {consent}."
            ) from exc
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise CheckpointError(
            f"Checkpoint {path} could not be read (corrupt or truncated?): {type(exc).__name__}: {exc}"
        ) from exc
