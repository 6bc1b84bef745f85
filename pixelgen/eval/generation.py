"""Class-balanced sample sets at scale (the 50k FID protocol), reproducible and resumable.

* Labels: sample ``i`` has class ``i // per_class`` (50 per class for ImageNet).
* Noise: sample ``i`` starts from noise seeded by ``(seed, i)`` alone (:func:`pixelgen.generate` with
  ``start_index``), so the set does not depend on batch size, process count or restarts (docs/parity.md).
* Shards: the index range is cut into fixed-size shards, each written atomically to
  ``<out>/shards/shard_<k>.npy`` (uint8 NHWC). A restart skips finished shards. With a torchrun process group,
  rank 0 lists the missing shards and deals them out round-robin, so a resumed run is balanced; without one,
  ``rank``/``world_size`` name a static split (shard k belongs to rank k mod world_size), for independent jobs.
* Result: once every shard exists, ``<out>/samples.npz`` (``arr_0``: uint8 (N, H, W, 3), ordered by sample
  index: the ADM-suite format) is streamed from the shards, plus a few PNG grids. ``<out>/run.json`` records
  everything that determines the images; a restart with different settings is refused.

Batches start at shard boundaries, so with a fixed ``batch_size`` every image is computed in the same batch
whatever the process count: the file is byte-identical for any split on any device. Across batch sizes it is
byte-identical when the kernels give the same numbers for a row whatever the batch (true of the CPU tests
here); on GPUs keep ``--batch-size`` (and the GPU type) fixed when a resumed run must match bit for bit.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixelgen.eval.images import open_npz_array, write_uint8_npz
from pixelgen.utils.images import make_image_grid, save_image
from pixelgen.utils.io import atomic_save_json, atomic_write
from pixelgen.utils.versions import software_versions

__all__ = [
    "class_balanced_labels",
    "check_class_count",
    "generate_class_samples",
    "GenerationResult",
    "SAMPLES_NAME",
    "MANIFEST_NAME",
]

log = logging.getLogger(__name__)

SAMPLES_NAME = "samples.npz"
MANIFEST_NAME = "run.json"
_SHARD_DIR = "shards"


def class_balanced_labels(num: int, per_class: int) -> torch.Tensor:
    """Labels of a class-balanced set: sample ``i`` has class ``i // per_class``."""
    if num < 1 or per_class < 1:
        raise ValueError(f"num and per_class must be at least 1, got num={num}, per_class={per_class}.")
    return torch.arange(num) // per_class


def check_class_count(model: torch.nn.Module, num: int, per_class: int, expected_classes: int | None = None) -> int:
    """The model's class count, after checking it fits the labels asked for; one sentence when it does not."""
    if getattr(model, "cond_kind", "class") != "class":
        raise ValueError(
            "This checkpoint is a text-to-image model; class-balanced sets need a class-conditional one (use the prompt sets or `pixelgen generate`)."
        )
    classes = getattr(model, "num_classes", None)
    if not isinstance(classes, int):
        raise TypeError("The model has no integer num_classes attribute (the backbone contract).")
    if expected_classes is not None and classes != expected_classes:
        raise ValueError(
            f"The checkpoint has {classes} classes but {expected_classes} were asked for (set --num-classes or the preset to match the checkpoint)."
        )
    needed = math.ceil(num / per_class)
    if needed > classes:
        raise ValueError(
            f"{num} samples at {per_class} per class need {needed} classes but the checkpoint has {classes}; lower --num-samples to at most {classes * per_class} or change --per-class."
        )
    return classes


@dataclass
class GenerationResult:
    """What one call did: ``samples`` is the finished ``.npz`` (None until every shard exists)."""

    out_dir: Path
    samples: Path | None
    generated_shards: list[int] = field(default_factory=list)
    skipped_shards: int = 0
    images_generated: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images_generated / self.seconds if self.seconds > 0 else float("nan")


def _shard_path(out: Path, k: int) -> Path:
    return out / _SHARD_DIR / f"shard_{k:05d}.npy"


def _shard_ok(path: Path, shape: tuple[int, ...]) -> bool:
    if not path.is_file():
        return False
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return False
    if arr.shape != shape or arr.dtype != np.uint8:
        log.warning("shard %s has shape %s, expected %s; generating it again", path.name, arr.shape, shape)
        return False
    return True


def _check_manifest(out: Path, manifest: Mapping[str, Any]) -> None:
    path = out / MANIFEST_NAME
    if path.is_file():
        stored = json.loads(path.read_text())
        diff = {k: (stored.get(k), v) for k, v in manifest.items() if stored.get(k) != v}
        if diff:
            desc = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in list(diff.items())[:4])
            raise ValueError(
                f"{out} holds samples of a different run ({desc}); choose another output folder or delete it."
            )
    else:
        atomic_save_json(dict(manifest), path)


def _write_grids(samples: Path, out: Path, per_class: int, num: int, max_grids: int) -> list[Path]:
    """One image of up to 64 classes, spread over the class range; then up to 16 images of a few classes."""
    arr = open_npz_array(samples)
    classes_used = math.ceil(num / per_class)
    written = []
    picks = np.unique(np.linspace(0, classes_used - 1, min(64, classes_used)).round().astype(int))
    written.append(save_image(make_image_grid(np.asarray(arr[picks * per_class])), out / "grid_classes.png"))
    for c in np.unique(np.linspace(0, classes_used - 1, max(0, max_grids - 1)).round().astype(int)):
        first, stop = c * per_class, min(c * per_class + min(per_class, 16), num)
        written.append(save_image(make_image_grid(np.asarray(arr[first:stop])), out / f"grid_class{c:04d}.png"))
    return written


def generate_class_samples(
    model: torch.nn.Module,
    out_dir: str | os.PathLike,
    *,
    num: int,
    per_class: int = 50,
    sampler: str = "heun",
    sampler_params: Mapping[str, Any] | None = None,
    seed: int = 0,
    batch_size: int = 32,
    shard_size: int = 1000,
    rank: int | None = None,
    world_size: int | None = None,
    device: str | torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
    expected_classes: int | None = None,
    max_shards: int | None = None,
    keep_shards: bool = False,
    num_grids: int = 4,
    run_info: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> GenerationResult:
    """Generate (or resume) a class-balanced set in ``out_dir`` (see the module doc).

    ``sampler``/``sampler_params``: a registered sampler and its parameters (the released configs' names); the paper's
    settings are registered sampling presets (``pixelgen.samplers.sampling_preset("xl_cfg")``).
    ``max_shards``: stop after this many new shards in this call (time-limited jobs; rerun to continue).
    ``run_info``: extra entries for ``run.json`` that identify the model (e.g. the checkpoint path); a restart
    whose entries differ is refused. Returns a :class:`GenerationResult`.
    """
    import torch.distributed as dist

    from pixelgen.distributed import barrier, broadcast_object
    from pixelgen.generate import generate
    from pixelgen.samplers import build_sampler

    started = time.time()
    out = Path(out_dir)
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be at least 1, got {shard_size} and {batch_size}.")
    if max_shards is not None and max_shards < 0:
        raise ValueError(f"max_shards must be non-negative, got {max_shards}.")
    labels = class_balanced_labels(num, per_class)
    num_classes = check_class_count(model, num, per_class, expected_classes)
    params = dict(sampler_params or {})
    sampler_obj = build_sampler(sampler, **params)

    grouped = dist.is_available() and dist.is_initialized()
    if grouped:
        rank, world_size = dist.get_rank(), dist.get_world_size()
    rank, world_size = rank or 0, world_size or 1
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size), got rank={rank}, world_size={world_size}.")

    size, channels = int(model.input_size), int(model.in_channels)
    manifest = {
        "format": "pixelgen-class-samples-v1",
        "num": num,
        "per_class": per_class,
        "seed": seed,
        "shard_size": shard_size,
        "sampler": sampler,
        "sampler_params": params,
        "image_size": size,
        "num_classes": num_classes,
        "autocast": str(autocast_dtype) if autocast_dtype is not None else None,
        "versions": software_versions(),  # a set is not resumed under other software
        **dict(run_info or {}),
    }
    manifest = json.loads(json.dumps(manifest, default=str))  # what run.json will read back as
    if rank == 0 or not grouped:
        _check_manifest(out, manifest)
    barrier()
    if grouped and rank != 0:
        _check_manifest(out, manifest)

    samples = out / SAMPLES_NAME
    shards = [(k, k * shard_size, min((k + 1) * shard_size, num)) for k in range(math.ceil(num / shard_size))]
    if samples.is_file():
        log.info("%s already holds the finished set (%d images)", samples, num)
        return GenerationResult(out, samples, seconds=time.time() - started)

    def shard_shape(start: int, stop: int) -> tuple[int, ...]:
        return (stop - start, size, size, channels)

    if grouped:
        todo = broadcast_object(
            [k for k, a, b in shards if not _shard_ok(_shard_path(out, k), shard_shape(a, b))] if rank == 0 else None
        )
        skipped = len(shards) - len(todo)
        mine = todo[rank::world_size]
    else:
        owned = [k for k, _, _ in shards if k % world_size == rank]
        mine = [k for k in owned if not _shard_ok(_shard_path(out, k), shard_shape(*shards[k][1:]))]
        skipped = len(owned) - len(mine)
    if max_shards is not None:
        mine = mine[:max_shards]

    from tqdm.auto import tqdm

    result = GenerationResult(out, None, skipped_shards=skipped)
    log.info("rank %d/%d: %d shard(s) to generate, %d already done", rank, world_size, len(mine), skipped)
    with tqdm(
        total=sum(shards[k][2] - shards[k][1] for k in mine),
        unit="img",
        desc=f"sampling (rank {rank})",
        disable=not progress,
    ) as bar:
        for k in mine:
            _, start, stop = shards[k]
            images = generate(
                model,
                labels[start:stop],
                sampler=sampler_obj,
                seed=seed,
                batch_size=batch_size,
                device=device,
                autocast_dtype=autocast_dtype,
                progress=False,
                start_index=start,
            )
            with atomic_write(_shard_path(out, k)) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, images.permute(0, 2, 3, 1).contiguous().numpy())
            result.generated_shards.append(k)
            result.images_generated += stop - start
            bar.update(stop - start)
    barrier()

    result.seconds = time.time() - started
    if rank != 0:  # rank 0 assembles (with independent jobs: rerun rank 0, or once with world_size 1)
        return result
    missing = [k for k, a, b in shards if not _shard_ok(_shard_path(out, k), shard_shape(a, b))]
    if missing:
        log.info(
            "%d of %d shards still missing (%s ...); rerun the same command to continue",
            len(missing),
            len(shards),
            missing[:5],
        )
        return result

    chunks = (np.load(_shard_path(out, k), mmap_mode="r") for k, _, _ in shards)
    write_uint8_npz(samples, (num, size, size, channels), chunks)
    _write_grids(samples, out, per_class, num, num_grids)
    if not keep_shards:
        for k, _, _ in shards:
            _shard_path(out, k).unlink(missing_ok=True)
        if not any((out / _SHARD_DIR).iterdir()):
            (out / _SHARD_DIR).rmdir()
    log.info("wrote %s (%d images) and sample grids", samples, num)
    result.samples = samples
    return result
