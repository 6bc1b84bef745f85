"""Shared pieces of the post-hoc EMA and sweep tests: a tiny training run with post-hoc EMA on, a toy module
whose weights follow a given trajectory, and the command line that the FSDP test runs under torchrun."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from train_helpers import RandomImages, SeededFlowMatching, tiny_jit

from pixelgen.train import TrainConfig, Trainer, apply_overrides


def posthoc_config(out: Path, *extra: str) -> TrainConfig:
    return apply_overrides(
        TrainConfig(),
        [
            f"out_dir={out}",
            "max_steps=12",
            "data.batch_size=4",
            "data.num_workers=0",
            "sample.num_images=0",
            "optim.lr=1e-3",
            "log_every=1",
            "ckpt_every=1000",
            "export_ema=false",
            "ema_decay=0.9",
            "num_threads=1",
            "posthoc_ema.sigma_rels=[0.05,0.1]",
            "posthoc_ema.every=3",
            *extra,
        ],
    )


def train_run(cfg: TrainConfig, *, resume=None, num_classes: int = 4):
    torch.manual_seed(0)
    trainer = Trainer(
        cfg,
        model=tiny_jit(num_classes=num_classes),
        objective=SeededFlowMatching(),
        dataset=RandomImages(n=12, num_classes=num_classes),
        resume=resume,
        progress=False,
    )
    result = trainer.fit()
    trainer.close()
    return trainer, result


class Toy(nn.Module):
    """Five trainable numbers, two frozen ones and a buffer: the parts a backbone's state has."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(5))
        self.frozen = nn.Parameter(torch.full((2,), 3.0), requires_grad=False)
        self.register_buffer("table", torch.arange(3.0))


def follow(model: Toy, trajectory: np.ndarray, ema, run_dir: Path | None = None) -> None:
    """Set the weights to ``trajectory[t-1]`` for t = 1..T, updating ``ema`` (and saving its due snapshots)."""
    for t, theta in enumerate(trajectory, start=1):
        with torch.no_grad():
            model.weight.copy_(torch.as_tensor(theta, dtype=torch.float32))
        ema.update(t)
        if run_dir is not None and ema.due(t):
            ema.save_snapshot(run_dir, t)


def reference_images(n: int = 12, num_classes: int = 4) -> np.ndarray:
    """The training images of :func:`train_run` as uint8 NHWC (a reference set for the metrics)."""
    ds = RandomImages(n=n, num_classes=num_classes)
    return ((ds.images + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


class TinyFeatures(nn.Module):
    """A cheap stand-in feature network for the metric code path (fixed random conv features)."""

    tag = "tiny-test-features"

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 12, 3, stride=2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    @torch.no_grad()
    def forward(self, images):
        h = torch.relu(self.conv(images.float() / 127.5 - 1))
        pool = h.mean((2, 3))
        return {"pool": pool, "spatial": pool, "logits": pool}


def _fsdp_main() -> None:
    """``python posthoc_helpers.py OUT STRATEGY`` under torchrun: 4 steps with snapshots every 2 steps."""
    import sys

    out, strategy = Path(sys.argv[1]), sys.argv[2]
    cfg = posthoc_config(out, "max_steps=4", "posthoc_ema.every=2", f"strategy={strategy}", "per_sample_noise=true")
    cfg.data.batch_size = 2
    train_run(cfg)


if __name__ == "__main__":
    _fsdp_main()
