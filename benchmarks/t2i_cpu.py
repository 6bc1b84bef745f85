#!/usr/bin/env python
"""Text-to-image figures on CPU for the demo set-up (tiny random Qwen3 + tiny JiT-T2I); prints a table.

1. text-encoder throughput (prompts/s) of the demo encoder, per batch size (median of repeats);
2. training throughput (images/s) of the demo model at 32 px and 64 px with the full objective (the demo's
   random tiny DINOv2 and random-trunk LPIPS-AlexNet when no real weights are cached), measured over the
   second half of the steps so start-up costs are left out;
3. the wall time of ``pixelgen train --preset t2i_demo`` (all three stages), unless ``--skip-demo``.

    python benchmarks/t2i_cpu.py [--threads 1] [--steps 10] [--skip-demo]

One thread by default: on a small CPU shared with other jobs, multi-threaded kernels of these tiny models
spend most of their time waiting for each other, and the figures swing by 10x between runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def encoder_throughput(batch_sizes: list[int], repeats: int) -> list[tuple[int, float]]:
    from pixelgen.conditioners import build_tiny_qwen3
    from pixelgen.data import demo_captions

    encoder = build_tiny_qwen3()
    captions = demo_captions()
    rows = []
    for batch in batch_sizes:
        prompts = [captions[i % len(captions)] for i in range(batch)]
        encoder(prompts)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            encoder(prompts)
            times.append(time.perf_counter() - start)
        rows.append((batch, batch / statistics.median(times)))
    return rows


def training_throughput(stage: str, steps: int, out: Path) -> dict:
    from pixelgen.train import train
    from pixelgen.train.presets import t2i_demo_stage

    config = t2i_demo_stage(stage, out, steps=steps)
    config.init_from = None  # throughput only: no previous stage needed
    config.sample.num_images = 0  # no grids: pure training steps
    config.log_every = steps // 2
    config.ckpt_every = config.keep_every = 10 * steps
    train(config, progress=False)
    records = [json.loads(line) for line in (Path(config.out_dir) / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "images_per_s" in r][-1]
    batch = config.data.batch_size * config.optim.grad_accum
    return {
        "stage": stage,
        "res": config.data.resolution,
        "images_per_step": batch,
        "images_per_s": last["images_per_s"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=10, help="training steps per measurement (the second half is timed)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-demo", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, CPU")

    print("\ntext encoder (qwen3_tiny_random: hidden 64, 2 layers, 128 tokens)")
    print(f"{'batch':>6} {'prompts/s':>10}")
    for batch, rate in encoder_throughput([1, 8, 32], args.repeats):
        print(f"{batch:>6} {rate:>10.1f}")

    print("\ntraining (demo JiT-T2I: hidden 64, 4+1 blocks, patch 4; batch 8 x accum 2; full objective)")
    print(f"{'stage':>12} {'res':>4} {'img/step':>9} {'img/s':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for stage in ("pretrain256", "pretrain512"):
            row = training_throughput(stage, args.steps, Path(tmp))
            print(f"{row['stage']:>12} {row['res']:>4} {row['images_per_step']:>9} {row['images_per_s']:>7.2f}")

        if not args.skip_demo:
            from pixelgen.cli import main as cli

            start = time.perf_counter()
            code = cli(["train", "--preset", "t2i_demo", "--out", str(Path(tmp) / "demo"), "--no-progress",
                        "--threads", str(args.threads)])  # fmt: skip
            wall = time.perf_counter() - start
            print(f"\ndemo (pixelgen train --preset t2i_demo): exit code {code}, wall time {wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
