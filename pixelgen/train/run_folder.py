"""One writer per run folder, and no run clobbered by another.

* :class:`RunLock` holds ``<run>/.lock`` (JSON: host, pid, start time) while a run writes there. A second
  writer is refused in one sentence; a lock left by a process that died on this host is taken over.
* :func:`prepare_run_folder` refuses to start a new run in a folder that already holds one, unless the caller
  resumes it or asked to overwrite it (then the previous run's outputs are removed, nothing else).
* :func:`truncate_metrics` drops the rows a resumed run is about to write again, so ``metrics.jsonl`` never
  repeats a step.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import shutil
import socket
from pathlib import Path

from ..utils.io import FolderNotWritableError, atomic_write, pid_alive

__all__ = ["RunFolderError", "RunLock", "prepare_run_folder", "holds_a_run", "truncate_metrics", "RUN_OUTPUTS"]

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
# What a training run writes into its folder (removed by overwrite=True; anything else is left alone).
RUN_OUTPUTS = (
    "checkpoints",
    "samples",
    "export",
    "tensorboard",
    "config.json",
    "metrics.jsonl",
    "train.log",
    "loss_curve.png",
)


class RunFolderError(ValueError):
    """The run folder is in use by another process, or already holds a run that would be overwritten."""


class RunLock:
    """``<folder>/.lock`` held by this process (``acquire``/``release``; also a context manager)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.held = False

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def acquire(self) -> RunLock:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except PermissionError as exc:
            raise FolderNotWritableError(exc.errno, f"Cannot write folder {self.folder} (no permission).") from exc
        except OSError as exc:
            raise FolderNotWritableError(exc.errno, f"Cannot write folder {self.folder} ({exc.strerror}).") from exc
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                owner = self._owner()
                if owner is None:  # a lock being written right now, or an empty one left by a crash
                    owner = {}
                if owner.get("host") == me["host"] and isinstance(owner.get("pid"), int) and owner["pid"] == me["pid"]:
                    self.held = True  # this process already holds it (a second Trainer in the same process)
                    return self
                if (
                    owner.get("host") == me["host"]
                    and isinstance(owner.get("pid"), int)
                    and not pid_alive(owner["pid"])
                ):
                    log.warning(
                        "Taking over the lock of %s: process %d that held it (started %s) is gone.",
                        self.folder,
                        owner["pid"],
                        owner.get("started", "?"),
                    )
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
                    continue
                raise RunFolderError(
                    f"Run folder {self.folder} is in use by process {owner.get('pid', '?')} on host "
                    f"{owner.get('host', '?')} (since {owner.get('started', '?')}); use another folder, or delete "
                    f"{self.path} if that run is no longer running."
                ) from None
            except PermissionError as exc:
                raise FolderNotWritableError(exc.errno, f"Cannot write folder {self.folder} (no permission).") from exc
            except OSError as exc:
                raise FolderNotWritableError(exc.errno, f"Cannot write folder {self.folder} ({exc.strerror}).") from exc
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise RunFolderError(f"Could not take the lock {self.path}; another process keeps re-creating it.")

    def release(self) -> None:
        if not self.held:
            return
        owner = self._owner()
        if owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holds_a_run(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds outputs of a training run (a config, metrics or a checkpoint)."""
    folder = Path(folder)
    return any((folder / name).exists() for name in ("config.json", "metrics.jsonl", "checkpoints/latest.pt"))


def prepare_run_folder(folder: str | os.PathLike, *, resuming: bool, overwrite: bool) -> None:
    """Refuse (one sentence) to start a new run over an existing one; with ``overwrite`` remove its outputs."""
    folder = Path(folder)
    if resuming or not holds_a_run(folder):
        return
    if not overwrite:
        raise RunFolderError(
            f"Run folder {folder} already holds a run; pass --resume to continue it or --overwrite to start over "
            "(resume='auto' / overwrite=True from Python)."
        )
    for name in RUN_OUTPUTS:
        target = folder / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    log.warning("Overwriting the previous run in %s (its checkpoints, logs and samples were removed).", folder)


def truncate_metrics(path: str | os.PathLike, step: int) -> int:
    """Drop the records of ``metrics.jsonl`` after ``step`` (those a run resumed at ``step`` writes again);
    returns how many were dropped. Unreadable lines (a write cut off by a kill) are dropped too."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            keep = int(row.get("step", 0)) <= step
        except (ValueError, TypeError, AttributeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        with atomic_write(path) as tmp:
            tmp.write_text("".join(f"{line}\n" for line in kept))
    return dropped
