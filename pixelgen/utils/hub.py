"""One weight-resolution rule for every frozen network (DINOv2, LPIPS-VGG, Inception, Qwen3 ...).

Order:
  1. an explicit path given by the user (must exist, else a clear error);
  2. the local caches: the torch hub checkpoint folder (``$TORCH_HOME/hub/checkpoints``) and the
     Hugging Face hub cache (``$HF_HUB_CACHE`` / ``$HF_HOME/hub`` / ``~/.cache/huggingface/hub``);
  3. a download, only when online (``HF_HUB_OFFLINE``/``PIXELGEN_OFFLINE`` unset and the host reachable);
  4. otherwise :class:`WeightsNotFoundError`, naming the file and the option that supplies it.

Random weights are never substituted here: callers ask for them by name (``weights="random"``).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "WeightSource",
    "WeightsNotFoundError",
    "resolve_weights",
    "is_offline",
    "torch_hub_checkpoint_dir",
    "hf_cache_dir",
    "find_in_hf_cache",
]


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights were neither given, nor cached, nor downloadable."""


@dataclass(frozen=True)
class WeightSource:
    """Where a network's weights can come from.

    ``filename``: the file name in the torch hub checkpoint folder (and the download's name).
    ``url``: a direct download address (optional). ``hf_repo``/``hf_filename``: a Hugging Face repo file.
    ``description``: what the weights are, for error messages. ``option``: how a user passes a path.
    """

    filename: str
    url: str | None = None
    hf_repo: str | None = None
    hf_filename: str | None = None
    description: str = ""
    option: str = "weights=<path>"
    extra_names: tuple[str, ...] = field(default_factory=tuple)


_TRUE = {"1", "true", "yes", "on"}


def is_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in _TRUE
        for v in ("HF_HUB_OFFLINE", "PIXELGEN_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def torch_hub_checkpoint_dir() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def find_in_hf_cache(repo_id: str, filename: str | None = None) -> Path | None:
    """Path of ``filename`` in the HF cache snapshot of ``repo_id`` (or the snapshot folder itself).

    Prefers the snapshot that ``refs/main`` points to, then any snapshot holding the file.
    """
    repo_dir = hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    snaps = repo_dir / "snapshots"
    if not snaps.is_dir():
        return None
    candidates = []
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        candidates.append(snaps / ref.read_text().strip())
    candidates += sorted((p for p in snaps.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for snap in candidates:
        target = snap / filename if filename else snap
        if target.exists():
            return target
    return None


def _reachable(url: str, timeout: float = 3.0) -> bool:
    host = urllib.parse.urlparse(url).hostname
    if not host:
        return False
    try:
        socket.getaddrinfo(host, 443)
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _download(url: str, dest: Path, timeout: float = 30.0) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f, length=1 << 20)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def resolve_weights(source: WeightSource, path: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """Return a local path to the weights described by ``source`` (see the module doc for the order)."""
    what = source.description or source.filename
    if path is not None:
        p = Path(os.path.expanduser(str(path)))
        if p.exists():
            return p
        raise WeightsNotFoundError(f"The weights file given for {what} does not exist: {p}.")

    names = (source.filename, *source.extra_names)
    hub_dir = torch_hub_checkpoint_dir()
    for name in names:
        if (hub_dir / name).is_file():
            return hub_dir / name
    if source.hf_repo:
        hit = find_in_hf_cache(source.hf_repo, source.hf_filename)
        if hit is not None:
            return hit

    tried = [str(hub_dir / source.filename)]
    if source.hf_repo:
        tried.append(
            f"HF cache {hf_cache_dir()}/models--{source.hf_repo.replace('/', '--')}"
            + (f"/.../{source.hf_filename}" if source.hf_filename else "")
        )
    if download and not is_offline():
        if source.url and _reachable(source.url):
            try:
                return _download(source.url, hub_dir / source.filename)
            except OSError as exc:
                tried.append(f"download from {source.url} failed ({exc})")
        elif source.hf_repo:
            try:
                from huggingface_hub import hf_hub_download, snapshot_download  # type: ignore

                if _reachable("https://huggingface.co"):
                    if source.hf_filename:
                        return Path(hf_hub_download(source.hf_repo, source.hf_filename))
                    return Path(snapshot_download(source.hf_repo))
            except Exception as exc:  # pragma: no cover - needs network
                tried.append(f"Hugging Face download failed ({type(exc).__name__})")
    reason = "offline (HF_HUB_OFFLINE/PIXELGEN_OFFLINE set)" if is_offline() else "not downloadable from here"
    raise WeightsNotFoundError(
        f"Pretrained weights for {what} ('{source.filename}') were not found and are {reason}; "
        f"looked in: {'; '.join(tried)}. Pass the file with {source.option}, or put it in one of those places."
    )
