"""Captioned images streamed from webdataset tar shards (text-to-image pretraining data), read with the
standard library's ``tarfile``.

A shard is a tar (or .tar.gz) file; files sharing a name up to the first dot form one sample, keyed by the
rest of the name (``0001.jpg`` + ``0001.txt`` -> ``{"jpg": ..., "txt": ...}``).

* shards are split across ranks (``split_by_node=True``), so no two ranks read the same sample in an epoch
  (``split_by_node=False`` gives every rank every shard, as the original did; see docs/parity.md);
* the shard list is shuffled with a full permutation seeded identically on every rank, which is what keeps
  the ranks' shards disjoint;
* corrupt samples and unreadable shards are skipped and counted (``stats()``), so a bad file never ends a
  run.
"""

from __future__ import annotations

import glob
import io
import logging
import os
import posixpath
import random
import re
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from pixelgen.registry import registries

from .captions import CaptionPrefixAugment
from .counters import SampleCounters
from .sampler import rank_and_world_size
from .transforms import adm_center_crop, check_resolution, load_rgb, make_sample

__all__ = ["CaptionShardDataset", "expand_shards", "read_shard", "shuffle_buffer"]

log = logging.getLogger(__name__)

_MAX_WARNINGS = 5  # per process; the counters keep the full tally


def _expand_braces(pattern: str) -> list[str]:
    """Expand webdataset-style braces: ``{000..012}`` (zero-padded ranges) and ``{a,b}`` lists."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, body, tail = pattern[: match.start()], match.group(1), pattern[match.end() :]
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        lo, hi = numeric.groups()
        options = [str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    return [expanded for opt in options for expanded in _expand_braces(head + opt + tail)]


def expand_shards(shards: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Sorted shard paths from files, folders (every ``*.tar`` / ``*.tar.gz`` below them), glob patterns
    (``**`` allowed) and brace patterns (``shard-{000..099}.tar``)."""
    items = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
    if not items:
        raise ValueError("No shards given: pass a folder, a file, a glob or brace pattern, or a list of them.")
    found: set[str] = set()
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"Shard sources must be paths or patterns, got {type(item).__name__}.")
        matched: list[str] = []
        for pattern in _expand_braces(os.path.expanduser(os.fspath(item))):
            path = Path(pattern)
            if path.is_dir():
                matched += [str(p) for p in path.rglob("*") if p.is_file() and p.name.endswith((".tar", ".tar.gz"))]
            elif path.is_file():
                matched.append(pattern)
            else:
                matched += [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
        if not matched:
            raise FileNotFoundError(f"No shards matched '{os.fspath(item)}'.")
        found.update(matched)
    return sorted(found)


def read_shard(path: str, on_error: Any = None) -> Iterator[dict[str, Any]]:
    """Samples of one tar shard as dicts of raw bytes plus ``__key__``. A read error ends the shard and is
    passed to ``on_error(path, exc)`` (re-raised when ``on_error`` is None); samples before it are kept."""
    key, sample = None, {}
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                base = posixpath.basename(member.name)
                if not member.isfile() or base.startswith(".") or "." not in base:
                    continue
                stem, suffix = base.split(".", 1)
                member_key = posixpath.join(posixpath.dirname(member.name), stem)
                data = tar.extractfile(member).read()
                if member_key != key:
                    if sample:
                        yield sample
                    key, sample = member_key, {"__key__": member_key}
                sample[suffix.lower()] = data
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        if on_error is None:
            raise
        on_error(path, exc)
        return  # the sample being assembled when the shard broke may be incomplete
    if sample:
        yield sample


def shuffle_buffer(items: Iterable[Any], size: int, rng: random.Random, initial: int = 100) -> Iterator[Any]:
    """Approximate shuffle of a stream through a buffer of ``size`` items. Output starts once ``initial``
    items are buffered; the buffer then grows by one every two items read until it holds ``size``."""
    if size <= 1:
        yield from items
        return
    buffer: list[Any] = []
    initial = min(initial, size)
    for reads, item in enumerate(items, start=1):
        buffer.append(item)
        if len(buffer) > size or (len(buffer) >= initial and reads % 2 == 0):
            j = rng.randrange(len(buffer))
            buffer[j], buffer[-1] = buffer[-1], buffer[j]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


@registries.dataset.register("webdataset_captions", kind="text")
class CaptionShardDataset(IterableDataset):
    """Captioned images from webdataset shards, split across ranks and DataLoader workers.

    ``root`` names the shards: a folder (every ``*.tar`` / ``*.tar.gz`` below it), a file, a glob or brace
    pattern, or a list of these (see :func:`expand_shards`); ``root`` like the other datasets' folders.

    Per sample: the image is the ``image_keys`` entry found first (``jpg``, else ``output_image``), the caption
    the first of ``caption_keys`` (``txt``, else ``input_prompt``); images whose short side is below
    ``resolution`` are skipped; the rest get ADM's resize + centre crop; captions of fewer than 30 words get
    one of the 7 prefixes with probability ``prefix_p`` (0.5; 0 turns it off). Samples missing a key, corrupt
    images and unreadable shards are skipped, counted and never stop the stream (``stats()``).

    Order: each epoch shuffles the shard list with ``seed + epoch`` (the same on every rank), rank ``r`` takes
    every ``world_size``-th shard from ``r``, worker ``w`` every ``num_workers``-th of those, and a
    ``shuffle_buffer`` of raw samples (default 20000) mixes them, seeded per (seed, epoch, rank,
    worker). With ``repeat=True`` (default) the stream never ends, so every rank can take the same number
    of steps. It is not resumable at a position: on resume pass a new ``seed`` (e.g. the step) so the
    resumed run does not replay the stream it already saw.

    Returns ``{"image", "raw", "caption"}`` samples.
    """

    def __init__(
        self,
        root: str | os.PathLike | Sequence[str | os.PathLike],
        resolution: int = 256,
        *,
        shuffle_buffer: int = 20000,
        shuffle_shards: bool = True,
        seed: int = 0,
        prefix_p: float = 0.5,
        split_by_node: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        repeat: bool = True,
        image_keys: Sequence[str] = ("jpg", "output_image"),
        caption_keys: Sequence[str] = ("txt", "input_prompt"),
    ) -> None:
        super().__init__()
        self.resolution = check_resolution(resolution)
        self.shards = expand_shards(root)
        default_rank, default_world = rank_and_world_size()
        self.rank = default_rank if rank is None else int(rank)
        self.world_size = default_world if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must lie in [0, {self.world_size}), got {self.rank}.")
        self.split_by_node = bool(split_by_node)
        if self.split_by_node and len(self.shards) < self.world_size:
            raise ValueError(
                f"Only {len(self.shards)} shards for {self.world_size} ranks: every rank needs at least one shard."
            )
        if isinstance(shuffle_buffer, bool) or not isinstance(shuffle_buffer, int) or shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be a non-negative integer, got {shuffle_buffer!r}.")
        self.shuffle_buffer = shuffle_buffer
        self.shuffle_shards = bool(shuffle_shards)
        self.seed = int(seed)
        self.augment = CaptionPrefixAugment(p=prefix_p)
        self.repeat = bool(repeat)
        if not image_keys or not caption_keys:
            raise ValueError("image_keys and caption_keys must each name at least one key.")
        self.image_keys = tuple(k.lower() for k in image_keys)
        self.caption_keys = tuple(k.lower() for k in caption_keys)
        self.counters = SampleCounters(("samples", "corrupt", "too_small", "missing", "corrupt_shards"))
        self._warnings = 0

    def stats(self) -> dict[str, int]:
        """Counts so far, summed over workers: samples yielded, corrupt images, too-small images, samples
        missing an image or caption, unreadable shards."""
        return self.counters.totals()

    def shards_for(self, epoch: int, worker: int = 0, num_workers: int = 1) -> list[str]:
        """The shards this rank's ``worker`` reads in ``epoch``."""
        order = list(self.shards)
        if self.shuffle_shards:
            random.Random(f"{self.seed}/shards/{epoch}").shuffle(order)
        if self.split_by_node:
            order = order[self.rank :: self.world_size]
        return order[worker::num_workers]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        epoch = 0
        while True:
            shards = self.shards_for(epoch, worker, num_workers)
            if not shards:  # more workers than shards: this one has nothing to read
                return
            rng = random.Random(f"{self.seed}/{epoch}/{self.rank}/{worker}")
            raw = (s for path in shards for s in read_shard(path, self._shard_failed))
            yielded = 0
            for record in shuffle_buffer(raw, self.shuffle_buffer, rng):
                sample = self._to_sample(record, rng)
                if sample is not None:
                    yielded += 1
                    yield sample
            if yielded == 0:
                raise RuntimeError(
                    f"None of the {len(shards)} shards read by rank {self.rank}, worker {worker} gave a usable sample "
                    f"(counts so far: {self.stats()})."
                )
            if not self.repeat:
                return
            epoch += 1

    def _warn(self, message: str, *args: Any) -> None:
        if self._warnings < _MAX_WARNINGS:
            self._warnings += 1
            log.warning(
                message + (" (further ones are only counted)" if self._warnings == _MAX_WARNINGS else ""), *args
            )

    def _shard_failed(self, path: str, exc: BaseException) -> None:
        self.counters.add("corrupt_shards")
        self._warn("Shard '%s' could not be read to the end and was cut short: %s", path, exc)

    def _to_sample(self, record: dict[str, Any], rng: random.Random) -> dict[str, Any] | None:
        image_bytes = next((record[k] for k in self.image_keys if k in record), None)
        caption_bytes = next((record[k] for k in self.caption_keys if k in record), None)
        if image_bytes is None or caption_bytes is None:
            self.counters.add("missing")
            return None
        try:
            image = load_rgb(io.BytesIO(image_bytes))
            caption = caption_bytes.decode("utf-8").strip()
        except Exception as exc:  # any decoder error: skip the sample, never the run
            self.counters.add("corrupt")
            self._warn("Skipping corrupt sample '%s': %s", record.get("__key__"), exc)
            return None
        if min(image.size) < self.resolution:
            self.counters.add("too_small")
            return None
        self.counters.add("samples")
        return make_sample(adm_center_crop(image, self.resolution), caption=self.augment(caption, rng))
