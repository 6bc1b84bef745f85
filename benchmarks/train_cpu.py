"""Training throughput (images/s) and peak memory on CPU: the ``--demo`` model, and PixelGen-XL/16 at batch 2.

    python benchmarks/train_cpu.py                   # both cases
    python benchmarks/train_cpu.py --case demo --steps 30 --threads 1
    python benchmarks/train_cpu.py --case xl --steps 2

Each case runs in its own process (so the peak resident memory, ``ru_maxrss``, is that case's alone) through the
real :class:`pixelgen.train.Trainer` (data loader, objective, AdamW, EMA), timing ``--steps`` optimiser steps after
``--warmup`` untimed ones. The demo case uses the demo recipe's configuration (tiny JiT, 32 px demo dataset,
tiny random DINOv2, LPIPS-Alex with a random trunk, i.e. what ``--demo`` runs offline). The XL case uses
PixelGen-XL/16 with the paper's objective on random 256 px images, and the full-size frozen encoders
(DINOv2-B/14, LPIPS-VGG) with RANDOM weights: the cost does not depend on the weight values. Nothing is asserted;
prints a table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


class RandomImageNet(torch.utils.data.Dataset):
    """Random 256 px images with ImageNet labels (the XL case's stand-in for the dataset)."""

    def __init__(self, n: int, size: int = 256):
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        raw = torch.rand(3, self.size, self.size, generator=g)
        return {"image": raw * 2 - 1, "raw": raw, "label": i % 1000}


def _demo_recipe():
    spec = importlib.util.spec_from_file_location("imagenet256_recipe", ROOT / "recipes" / "imagenet256.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(case: str, out: str, threads: int):
    from pixelgen.train import TrainConfig, apply_overrides

    common = [
        f"out_dir={out}",
        "sample.num_images=0",
        "export_ema=false",
        f"num_threads={threads}",
        "device=cpu",
        "precision=fp32",
    ]
    if case == "demo":
        recipe = _demo_recipe()
        config = recipe.demo()
        config.objective.overrides["encoders"] = {
            "dinov2": {
                "weights": "random",
                "base_patch_size": recipe.DEMO_PATCH,
                "model_overrides": {"embed_dim": 64, "depth": 2, "num_heads": 2},
            },
            "lpips": {"net": "alex", "weights": "random"},
        }
        return apply_overrides(config, common), None
    config = apply_overrides(TrainConfig(), [*common, "data.batch_size=2", "data.num_workers=0"])
    config.objective.overrides["encoders"] = {
        "dinov2": {"weights": "random"},
        "lpips": {"net": "vgg", "weights": "random"},
    }
    return config, RandomImageNet(64)


def run_case(case: str, steps: int, warmup: int, threads: int) -> dict:
    from pixelgen.train import Trainer

    with tempfile.TemporaryDirectory() as out:
        config, dataset = _config(case, out, threads)
        trainer = Trainer(config, dataset=dataset, progress=False)
        params = sum(p.numel() for p in trainer.model.parameters())
        batches = trainer.batches()
        for _ in range(warmup):
            trainer.optimizer_step(batches)
        start = time.perf_counter()
        for _ in range(steps):
            trainer.optimizer_step(batches)
        seconds = time.perf_counter() - start
        trainer.close()
    images = steps * config.data.batch_size * config.optim.grad_accum
    return {
        "case": case,
        "params_M": params / 1e6,
        "batch": config.data.batch_size,
        "steps": steps,
        "threads": threads,
        "s_per_step": seconds / steps,
        "images_per_s": images / seconds,
        "peak_rss_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", choices=["demo", "xl", "all"], default="all")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 30 demo, 2 xl)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 3 demo, 1 xl)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 demo, 2 xl)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    defaults = {"demo": (30, 3, 1), "xl": (2, 1, 2)}
    if args.child:
        steps, warmup, threads = (
            v if v is not None else d for v, d in zip((args.steps, args.warmup, args.threads), defaults[args.case])
        )
        print(json.dumps(run_case(args.case, steps, warmup, threads)))
        return
    rows = []
    for case in ["demo", "xl"] if args.case == "all" else [args.case]:
        cmd = [sys.executable, __file__, "--child", "--case", case]
        for flag in ("steps", "warmup", "threads"):
            if getattr(args, flag) is not None:
                cmd += [f"--{flag}", str(getattr(args, flag))]
        print(f"running {case} ...", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-2000:])
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(
        f"\n{'case':6s} {'params':>9s} {'batch':>5s} {'threads':>7s} {'s/step':>8s} {'images/s':>9s} {'peak RSS':>9s}"
    )
    for r in rows:
        print(
            f"{r['case']:6s} {r['params_M']:8.1f}M {r['batch']:5d} {r['threads']:7d} {r['s_per_step']:8.3f} {r['images_per_s']:9.2f} {r['peak_rss_GiB']:8.2f}G"
        )
    if any(r["case"] == "xl" for r in rows):
        print(
            "xl: frozen DINOv2-B/14 and LPIPS-VGG with random weights (same cost as the real ones), random 256 px data."
        )


if __name__ == "__main__":
    main()
