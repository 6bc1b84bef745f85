"""Safe, atomic file I/O.

* Writes go to a temporary file in the same directory (``.<name>.<pid>.<token>.tmp``, created with the
  process's umask like any other file), are fsync'ed, then renamed over the target, so a crash never leaves a
  half-written file under the final name. :func:`remove_stale_temporaries` deletes the temporaries of
  processes that died mid-write, never those of a live writer.
* A full disk or a folder that cannot be written is reported in one sentence (:class:`DiskFullError`,
  :class:`FolderNotWritableError`), and the target keeps its previous content.
* Weights are stored as safetensors; anything else is read with ``torch.load(weights_only=True)``.
  A file that ``weights_only`` refuses is only read as a pickle when the caller passes ``trust_pickle=True``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
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
    "remove_stale_temporaries",
    "pid_alive",
    "CheckpointError",
    "WriteError",
    "DiskFullError",
    "FolderNotWritableError",
]


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, truncated or of an unexpected format."""


class WriteError(OSError):
    """A file could not be written; the message says why in one sentence and the target is unchanged."""

    def __str__(self) -> str:  # the sentence alone, without OSError's "[Errno N]" prefix
        return self.strerror or super().__str__()


class DiskFullError(WriteError):
    """No space left on the device that holds the target."""


class FolderNotWritableError(WriteError):
    """The target's folder is read-only or not writable by this process."""


_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NOT_WRITABLE = {errno.EACCES, errno.EROFS, errno.EPERM}


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _write_error(exc: BaseException, path: Path, size_hint: int | None) -> WriteError | None:
    """Translate a failed write into one sentence, or None when it is not about space or permissions."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code is None and "file write failed" in text:  # torch.save's C++ writer drops errno: look at the disk
        try:
            free = shutil.disk_usage(_existing_parent(path.parent)).free
        except OSError:
            free = None
        if free is not None and (size_hint is None or free < size_hint):
            code = errno.ENOSPC
    if code in _NO_SPACE:
        where = _existing_parent(path.parent)
        try:
            free_mb = f", {shutil.disk_usage(where).free / 2**20:.0f} MB free"
        except OSError:
            free_mb = ""
        need = f"need about {max(1, round(size_hint / 2**20))} MB" if size_hint else "the file did not fit"
        return DiskFullError(
            code,
            f"No space left on device {_mount_point(where)} ({need}{free_mb}) while writing {path}; "
            "the previous file is kept.",
        )
    if code in _NOT_WRITABLE:
        return FolderNotWritableError(
            code, f"Cannot write folder {path.parent} (read-only or no permission); the previous file is kept."
        )
    return None


def _temp_path(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, size_hint: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is fsync'ed and renamed onto ``path``.

    ``size_hint`` (bytes) only improves the message when the disk is full.
    """
    path = Path(path)
    tmp_path: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = _temp_path(path)
        # O_EXCL with mode 0o666: the kernel applies the umask, as for any file the user creates.
        os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
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
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, WriteError):
            raise
        translated = _write_error(exc, path, size_hint)
        if translated is None:
            raise
        raise translated from exc
    finally:
        if tmp_path is not None:
            with contextlib.suppress(OSError):
                tmp_path.unlink()


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (a process we may not signal counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, *, recursive: bool = True) -> list[Path]:
    """Delete the atomic writer's temporaries (``.<name>.<pid>.<token>.tmp``) under ``folder`` whose writing
    process is no longer alive: a process killed mid-write leaves one; a live writer's is never touched."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
        parts = p.name.split(".")
        # ['', name..., pid, token, 'tmp']; files of the old naming (no pid) were always the writer's own
        pid = int(parts[-3]) if len(parts) >= 5 and parts[-3].isdigit() else None
        if not p.is_file() or (pid is not None and pid_alive(pid)):
            continue
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file, then rename."""
    with atomic_write(path, size_hint=_tensor_bytes(obj)) as tmp:
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
    with atomic_write(path, size_hint=_tensor_bytes(clean)) as tmp:
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
