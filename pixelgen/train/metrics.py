"""Run logs: JSON lines (always), TensorBoard (when installed), a loss-curve PNG and sample-grid PNGs.

Only rank 0 writes. ``metrics.jsonl`` gets one object per logged step (``{"step": ..., "loss": ..., ...}``)
and one per event (``{"event": "skipped_step", ...}``); it is appended to on resume, so it reads as one history.
"""

from __future__ import annotations

import json
import logging
import math
import os
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..utils.io import atomic_write

__all__ = ["MetricsLogger", "read_metrics", "plot_loss_curve", "save_image_grid"]

log = logging.getLogger(__name__)


class MetricsLogger:
    def __init__(self, out_dir: str | os.PathLike, *, enabled: bool = True, tensorboard: bool = True):
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.path = self.out_dir / "metrics.jsonl"
        self._tb = None
        if enabled:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self._tb = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"))
                except ImportError:  # TensorBoard is optional; JSON lines are always written
                    log.info(
                        "TensorBoard is not installed (pip install 'pixelgen[train]'); logging to %s only.", self.path
                    )

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in values.items()}}
        self._append(record)
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(f"train/{k}", v, step)

    def event(self, step: int, kind: str, **details: Any) -> None:
        if self.enabled:
            self._append({"step": int(step), "event": kind, **{k: _plain(v) for k, v in details.items()}})

    def _append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep them readable
    return v


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All step records (not events) of a ``metrics.jsonl`` file."""
    rows = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if "event" not in row:
                rows.append(row)
    return rows


def plot_loss_curve(
    records: Sequence[dict[str, Any]], path: str | os.PathLike, *, key: str = "loss", size: tuple[int, int] = (640, 360)
) -> Path | None:
    """Draw ``key`` against ``step`` (log-scale y) as a PNG with PIL; returns None when there is nothing to draw."""
    pts = [
        (r["step"], r[key])
        for r in records
        if isinstance(r.get(key), (int, float)) and math.isfinite(r[key]) and r[key] > 0
    ]
    if len(pts) < 2:
        return None
    w, h = size
    left, right, top, bottom = 70, 20, 30, 40
    steps = np.array([p[0] for p in pts], dtype=np.float64)
    vals = np.log10(np.array([p[1] for p in pts], dtype=np.float64))
    s0, s1 = steps.min(), max(steps.max(), steps.min() + 1)
    v0, v1 = vals.min(), max(vals.max(), vals.min() + 1e-6)
    xs = left + (steps - s0) / (s1 - s0) * (w - left - right)
    ys = top + (1 - (vals - v0) / (v1 - v0)) * (h - top - bottom)
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for frac in (0.0, 0.5, 1.0):  # three y ticks, labelled with the loss value
        y = top + (1 - frac) * (h - top - bottom)
        draw.line([left - 4, y, left, y], fill="black")
        draw.text((4, y - 6), f"{10 ** (v0 + frac * (v1 - v0)):.3g}", fill="black")
    draw.line(list(zip(xs.tolist(), ys.tolist())), fill=(31, 119, 180), width=2)
    draw.text((left, h - bottom + 8), f"step {int(s0)}", fill="black")
    draw.text((w - right - 90, h - bottom + 8), f"step {int(steps.max())}", fill="black")
    draw.text((left, 8), f"{key} (log scale)", fill="black")
    with atomic_write(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


def save_image_grid(
    images: torch.Tensor,
    path: str | os.PathLike,
    *,
    nrow: int | None = None,
    captions: Iterable[str] | None = None,
    pad: int = 2,
    min_side: int = 64,
) -> Path:
    """Tile uint8 (N, 3, H, W) images into one PNG, optionally with a caption (class name, prompt) wrapped in
    full under each image; images smaller than ``min_side`` are enlarged by an integer factor (nearest)."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a uint8 (N, 3, H, W) tensor, got {images.dtype} {tuple(images.shape)}.")
    captions = list(captions) if captions is not None else None
    if captions is not None and len(captions) != images.shape[0]:
        raise ValueError(f"Got {images.shape[0]} images but {len(captions)} captions.")
    if min(images.shape[-2:]) < min_side:  # small demo images: enlarge (nearest) so the grid is readable
        factor = -(-min_side // min(images.shape[-2:]))
        images = images.repeat_interleave(factor, dim=-1).repeat_interleave(factor, dim=-2)
    n, _, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    line_h = 11
    wrapped = [textwrap.wrap(str(c), max(8, w // 6)) or ["(empty)"] for c in captions] if captions else None
    cap_h = line_h * max(len(lines) for lines in wrapped) + 2 if wrapped else 0
    canvas = Image.new("RGB", (nrow * (w + pad) + pad, rows * (h + pad + cap_h) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    arr = images.permute(0, 2, 3, 1).cpu().numpy()
    for i in range(n):
        r, c = divmod(i, nrow)
        x, y = pad + c * (w + pad), pad + r * (h + pad + cap_h)
        canvas.paste(Image.fromarray(arr[i]), (x, y))
        for k, line in enumerate(wrapped[i] if wrapped else ()):
            draw.text((x, y + h + 1 + k * line_h), line, fill="black")
    with atomic_write(path) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(path)
