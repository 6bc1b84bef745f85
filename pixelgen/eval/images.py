"""Image sets for evaluation: ADM-format ``.npz`` files (``arr_0``: uint8 (N, H, W, 3)), arrays, image folders.

Large sample files are memory-mapped rather than read whole: a 50,000-image set at 256 px is 9.8 GB. An
uncompressed ``.npz`` member (what ``np.savez`` and :func:`write_uint8_npz` write) is mapped in place; a
compressed one is read into memory.

:func:`write_uint8_npz` streams an ``arr_0`` array into an ``.npz`` chunk by chunk (no full copy in memory) with
fixed zip timestamps, so the same images always give a byte-identical file.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pixelgen.utils.io import atomic_write

__all__ = [
    "ImageSet",
    "open_images",
    "npz_keys",
    "open_npz_array",
    "write_uint8_npz",
    "check_nhwc_uint8",
    "IMAGE_EXTENSIONS",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed member timestamp: identical images give identical bytes


def check_nhwc_uint8(arr: np.ndarray, name: str) -> np.ndarray:
    """An ADM-format image array: uint8, (N, H, W, 3)."""
    if arr.ndim != 4:
        raise ValueError(f"{name} must be a 4-D uint8 array (N, H, W, 3) in the ADM format, got shape {arr.shape}.")
    if arr.shape[-1] != 3:
        hint = (
            " (it looks channels-first; the ADM format is channels-last: use arr.transpose(0, 2, 3, 1))"
            if arr.shape[1] == 3
            else ""
        )
        raise ValueError(f"{name} must have shape (N, H, W, 3), got {arr.shape}{hint}.")
    if arr.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8 with values 0-255 (the ADM format), got dtype {arr.dtype}.")
    return arr


def npz_keys(path: str | os.PathLike) -> list[str]:
    """Array names in an ``.npz`` file, without reading the arrays."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist.")
    try:
        with zipfile.ZipFile(path) as zf:
            return [n[:-4] if n.endswith(".npy") else n for n in zf.namelist()]
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{path} is not a readable .npz file (corrupt or truncated?).") from exc


def open_npz_array(path: str | os.PathLike, key: str = "arr_0") -> np.ndarray:
    """One array of an ``.npz``, memory-mapped when the member is stored uncompressed, else loaded."""
    path = Path(path)
    keys = npz_keys(path)
    if key not in keys:
        raise KeyError(f"{path} has no array '{key}' (it holds: {', '.join(keys) or 'nothing'}).")
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(key + ".npy")
    if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
        if not fortran and not dtype.hasobject:
            return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    with np.load(path, allow_pickle=False) as data:
        return data[key]


def write_uint8_npz(
    path: str | os.PathLike, shape: tuple[int, ...], chunks: Iterable[np.ndarray], key: str = "arr_0"
) -> Path:
    """Write ``chunks`` (uint8 arrays, concatenated along axis 0) as array ``key`` of shape ``shape`` into ``path``.

    Atomic (temporary file, then rename); deterministic bytes; loadable with ``np.load`` like ``np.savez``.
    """
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
        "fortran_order": False,
        "shape": tuple(int(s) for s in shape),
    }
    expected = int(np.prod(shape))
    written = 0
    with atomic_write(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            info = zipfile.ZipInfo(key + ".npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(member, header)
                for chunk in chunks:
                    chunk = np.ascontiguousarray(chunk)
                    if chunk.dtype != np.uint8 or chunk.shape[1:] != tuple(shape[1:]):
                        raise ValueError(
                            f"A chunk of shape {chunk.shape} and dtype {chunk.dtype} does not fit the uint8 array of shape {tuple(shape)}."
                        )
                    member.write(chunk.tobytes())
                    written += chunk.size
        if written != expected:
            raise ValueError(f"The chunks hold {written} values but an array of shape {tuple(shape)} needs {expected}.")
    return Path(path)


@dataclass
class ImageSet:
    """A sized source of uint8 images, stored channels-last: an array (possibly memory-mapped) or image files."""

    description: str
    array: np.ndarray | None = None  # (N, H, W, 3) uint8
    files: list[Path] | None = None
    fingerprint: str | None = None  # identifies the content for statistic caches; None: do not cache

    def __len__(self) -> int:
        return len(self.array) if self.array is not None else len(self.files or [])

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[torch.Tensor]:
        """uint8 (B, 3, H, W) tensors in order, covering the first ``limit`` images (all by default)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        n = len(self) if limit is None else min(limit, len(self))
        first_size: tuple[int, int] | None = None
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            if self.array is not None:
                chunk = np.array(self.array[start:stop])  # a writable copy (memory maps are read-only)
            else:
                chunk = np.stack([_read_image(p) for p in self.files[start:stop]])  # type: ignore[index]
                if first_size is None:
                    first_size = chunk.shape[1:3]
                if chunk.shape[1:3] != first_size:
                    raise ValueError(
                        f"Images in {self.description} differ in size ({first_size} vs {chunk.shape[1:3]}); resize or crop them to one size first."
                    )
            yield torch.from_numpy(chunk).permute(0, 3, 1, 2).contiguous()


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as exc:
        raise ValueError(f"{path} could not be read as an image: {exc}.") from exc


def _stat_fingerprint(entries: Iterable[Path], extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for p in entries:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def open_images(
    source: str | os.PathLike | np.ndarray | torch.Tensor | ImageSet, *, name: str = "images", key: str = "arr_0"
) -> ImageSet:
    """An :class:`ImageSet` from an ADM ``.npz``/``.npy`` file, an image folder, an NHWC uint8 array, or an
    NCHW uint8 tensor (what :func:`pixelgen.generate` returns)."""
    if isinstance(source, ImageSet):
        return source
    if isinstance(source, torch.Tensor):
        if source.dtype != torch.uint8 or source.ndim != 4 or source.shape[1] != 3:
            raise ValueError(
                f"{name} as a tensor must be uint8 (N, 3, H, W), got {source.dtype} {tuple(source.shape)}."
            )
        return ImageSet(f"{name} tensor", array=source.permute(0, 2, 3, 1).contiguous().numpy())
    if isinstance(source, np.ndarray):
        return ImageSet(f"{name} array", array=check_nhwc_uint8(source, name))
    path = Path(os.path.expanduser(str(source)))
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise ValueError(f"The folder {path} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
        return ImageSet(f"folder {path}", files=files, fingerprint=_stat_fingerprint(files, "folder"))
    if not path.exists():
        raise FileNotFoundError(f"{name} {path} does not exist.")
    if path.suffix == ".npy":
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    elif path.suffix == ".npz":
        arr = open_npz_array(path, key)
    else:
        raise ValueError(f"{name} {path} must be an .npz/.npy file in the ADM format or a folder of images.")
    check_nhwc_uint8(arr, f"{name} {path.name}['{key}']" if path.suffix == ".npz" else f"{name} {path.name}")
    return ImageSet(f"{path}", array=arr, fingerprint=_stat_fingerprint([path], key))
