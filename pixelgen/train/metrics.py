"""Run logs: ``metrics.jsonl`` (always), ``train.log`` (lines a person reads), TensorBoard (when installed) and
a loss-curve PNG (matplotlib, when installed).

Only rank 0 writes. ``metrics.jsonl`` gets one object per logged step (``{"step": ..., "loss": ..., ...}``)
and one per event (``{"event": "skipped_step", ...}``); a resumed run first drops the rows after its step, so
the file reads as one history with no step twice. ``train.log`` gets a line every ``log_every`` steps (step,
loss terms, images/s, ETA) and every event, with a time stamp; the same lines go to the ``pixelgen`` logger
when no progress bar is shown.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..utils.io import atomic_write

__all__ = ["MetricsLogger", "RunLog", "read_metrics", "plot_loss_curve", "format_progress", "format_duration"]

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


class RunLog:
    """``<run>/train.log``: time-stamped lines, appended (a resumed run continues the same file)."""

    def __init__(self, out_dir: str | os.PathLike, *, enabled: bool = True, echo: bool = False):
        self.path = Path(out_dir) / "train.log"
        self.enabled = enabled
        self.echo = echo  # also send progress lines to the pixelgen logger (no progress bar on screen)
        self._file = None

    def _write(self, line: str) -> None:
        if not self.enabled:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", buffering=1)  # line-buffered: readable while the run goes on
        stamp = datetime.datetime.now().isoformat(sep=" ", timespec="seconds")
        self._file.write(f"{stamp}  {line}\n")

    def progress(self, line: str) -> None:
        self._write(line)
        if self.enabled and self.echo:
            log.info(line)

    def info(self, line: str) -> None:
        self._write(line)
        if self.enabled:
            log.info(line)

    def warning(self, line: str) -> None:
        self._write(f"WARNING {line}")
        if self.enabled:
            log.warning(line)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


def format_progress(step: int, max_steps: int, values: dict[str, float], images_per_s: float, eta_s: float) -> str:
    """``step 100/800000  loss 0.1234  flow_matching 0.1  ...  12.3 img/s  ETA 3h12m`` (one line)."""
    width = len(str(max_steps))
    terms = "  ".join(
        f"{k} {v:.4g}" for k, v in values.items() if k not in {"images_per_s", "lr"} and isinstance(v, (int, float))
    )
    lr = values.get("lr")
    lr_part = f"  lr {lr:.3g}" if isinstance(lr, (int, float)) else ""
    return (
        f"step {step:>{width}d}/{max_steps}  {terms}{lr_part}  {images_per_s:.1f} img/s  ETA {format_duration(eta_s)}"
    )


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep them readable
    return v


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All step records (not events) of a ``metrics.jsonl`` file (a line cut off by a kill is skipped)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if "event" not in row:
                rows.append(row)
    return rows


_warned_no_matplotlib = False


def plot_loss_curve(
    records: Sequence[dict[str, Any]],
    path: str | os.PathLike,
    *,
    keys: Sequence[str] | None = None,
    size: tuple[int, int] = (640, 360),
) -> Path | None:
    """Draw the loss (and its terms) against the step, log-scale y, with matplotlib; returns None when there is
    nothing to draw or matplotlib is not installed (said once)."""
    global _warned_no_matplotlib
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        if not _warned_no_matplotlib:
            log.warning("matplotlib is not installed, so no loss curve is drawn (pip install 'pixelgen[train]').")
            _warned_no_matplotlib = True
        return None
    if keys is None:
        skip = {"step", "lr", "images_per_s", "grad_norm", "percept_weight"}
        keys = ["loss"] + sorted({k for r in records for k in r if k not in skip and k != "loss"})
    series = {}
    for key in keys:
        pts = [
            (r["step"], r[key])
            for r in records
            if isinstance(r.get(key), (int, float)) and math.isfinite(r[key]) and r[key] > 0
        ]
        if len(pts) >= 2:
            series[key] = pts
    if "loss" not in series:
        return None
    dpi = 100
    fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for key, pts in series.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=key, linewidth=2 if key == "loss" else 1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (log scale)")
    ax.grid(True, which="both", alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return Path(path)
