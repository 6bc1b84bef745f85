"""Small stand-ins for the trainer tests: a dataset of fixed random images and a seeded flow-matching objective.

``SeededFlowMatching`` follows the objective contract and, when the batch carries ``seeds``, draws each sample's
t, noise and condition drop from its own generator, which is what makes a 2-process run equal a 1-process run
with the doubled batch. ``NaNAt`` wraps an objective and returns a NaN term at chosen calls.
"""

from __future__ import annotations

import torch
from torch import nn


class RandomImages(torch.utils.data.Dataset):
    """``n`` fixed images (3, size, size) in [-1, 1] with labels ``i % num_classes``."""

    def __init__(self, n: int = 32, size: int = 16, num_classes: int = 4, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, size, size, generator=g) * 2 - 1
        self.num_classes = num_classes
        self.class_names = [f"class {i}" for i in range(num_classes)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        x = self.images[i]
        return {"image": x, "raw": (x + 1) / 2, "label": i % self.num_classes}


def tiny_jit(num_classes: int = 4, size: int = 16, **overrides):
    import pixelgen

    cfg = dict(
        input_size=size,
        patch_size=4,
        hidden_size=32,
        depth=2,
        num_heads=2,
        num_classes=num_classes,
        bottleneck_dim=16,
        in_context_len=2,
        in_context_start=1,
    )
    cfg.update(overrides)
    return pixelgen.build_model("jit", **cfg)


class SeededFlowMatching(nn.Module):
    """x-prediction flow matching plus a small trainable projector, with per-sample seeds."""

    def __init__(self, null_p: float = 0.1, hidden: int = 32):
        super().__init__()
        self.null_p = null_p
        self.proj = nn.Linear(hidden, 8)

    def _draws(self, batch: dict, like: torch.Tensor):
        b = like.shape[0]
        if "seeds" in batch:
            t, noise, drop = [], [], []
            for s in batch["seeds"].tolist():
                g = torch.Generator().manual_seed(int(s))
                t.append(torch.sigmoid(torch.randn((), generator=g) * 0.8 - 0.8))
                noise.append(torch.randn(like.shape[1:], generator=g))
                drop.append(torch.rand((), generator=g) < self.null_p)
            return torch.stack(t), torch.stack(noise), torch.stack(drop)
        t = torch.sigmoid(torch.randn(b) * 0.8 - 0.8)
        return t, torch.randn(like.shape), torch.rand(b) < self.null_p

    def forward(self, model, batch, step=0):
        x, y = batch["image"], batch["cond"]
        t, noise, drop = (v.to(x.device) for v in self._draws(batch, x))
        y = torch.where(drop, torch.full_like(y, model.num_classes), y)
        tb = t.view(-1, 1, 1, 1)
        x_t = tb * x + (1 - tb) * noise
        x_hat, feat = model(x_t, t, y, return_layer=1)
        fm = ((x_hat - x) ** 2 / (1 - tb).clamp_min(0.05) ** 2).mean()
        align = self.proj(feat).pow(2).mean() * 1e-3
        return {"fm_loss": fm.detach(), "align": align.detach(), "loss": fm + align}


class NaNAt(nn.Module):
    """Wraps an objective; on the listed call numbers (0-based) the ``fm_loss`` term becomes NaN."""

    def __init__(self, inner: nn.Module, bad_calls: set[int]):
        super().__init__()
        self.inner = inner
        self.bad_calls = set(bad_calls)
        self.calls = 0

    def forward(self, model, batch, step=0):
        out = self.inner(model, batch, step=step)
        if self.calls in self.bad_calls:
            nan = torch.tensor(float("nan"))
            out = {**out, "fm_loss": nan, "loss": out["loss"] + nan}
        self.calls += 1
        return out


def index_recorder(sink: list):
    """A batch transform that records each batch's dataset indices (``index`` key) and renames label → cond."""

    def transform(batch: dict) -> dict:
        sink.append(batch["index"].tolist())
        return {**batch, "cond": batch["label"]}

    return transform


class IndexedImages(RandomImages):
    """:class:`RandomImages` whose samples also carry their dataset ``index``."""

    def __getitem__(self, i: int) -> dict:
        return {**super().__getitem__(i), "index": i}


def tiny_encoders(patch: int = 4) -> dict:
    """Random tiny frozen encoders for objective tests (built from the global seed)."""
    return {
        "dinov2": {
            "weights": "random",
            "base_patch_size": patch,
            "model_overrides": {"embed_dim": 32, "depth": 2, "num_heads": 2},
        },
        "lpips": {"net": "vgg", "weights": "random"},  # VGG works from 16 px (AlexNet needs 31)
    }


def _run_from_command_line() -> None:
    """``python train_helpers.py OUT_DIR MAX_STEPS BATCH STRATEGY PRESET`` (run under torchrun by the tests).

    Trains a tiny JiT on :class:`IndexedImages` with the real objective and per-sample noise seeds, and writes
    the indices each rank saw to ``OUT_DIR/indices_rank<r>.json``.
    """
    import json
    import os
    import sys

    from pixelgen.train import TrainConfig, Trainer, apply_overrides

    out, steps, batch, strategy, preset = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    cfg = apply_overrides(
        TrainConfig(),
        [
            f"out_dir={out}",
            f"max_steps={steps}",
            f"data.batch_size={batch}",
            "data.num_workers=0",
            "sample.num_images=0",
            "optim.lr=1e-3",
            "log_every=1",
            "ckpt_every=1000",
            "export_ema=false",
            "per_sample_noise=true",
            f"strategy={strategy}",
            "ema_decay=0.5",
            "model.name=jit",
            'model.overrides={"input_size": 16, "patch_size": 4, "hidden_size": 32, "depth": 2, '
            '"num_heads": 2, "num_classes": 4, "bottleneck_dim": 16, "in_context_len": 2, "in_context_start": 1}',
            f"objective.preset={preset}",
            'objective.overrides={"align_layer": 1}',
        ],
    )
    cfg.objective.overrides["encoders"] = tiny_encoders()
    seen: list = []
    trainer = Trainer(cfg, dataset=IndexedImages(n=24), batch_transform=index_recorder(seen), progress=False)
    trainer.fit()
    rank = int(os.environ.get("RANK", 0))
    with open(os.path.join(out, f"indices_rank{rank}.json"), "w") as f:
        json.dump(seen, f)
    trainer.close()


if __name__ == "__main__":
    _run_from_command_line()
