"""CPU timings of the evaluation path (prints; never asserted).

1. Inception features (pool_3 + logits + the sFID spatial features in one pass) for N images at 256 px, with
   the TF-compatible InceptionV3 (torch-fidelity). Random weights are used unless --inception-weights is given:
   the cost is the same, the features are meaningless.
2. Sampling throughput of a tiny class-conditional JiT through the whole ``pixelgen sample`` path (checkpoint
   loading, sharded generation, atomic shard writes, samples.npz assembly, PNG grids), in images/s.

    python benchmarks/inception_cpu.py                     # 1,000 images; tiny-model sampling of 128 images
    python benchmarks/inception_cpu.py --num-images 200 --threads 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch


def time_inception(num_images: int, batch_size: int, weights: str | None) -> None:
    from pixelgen.eval.images import open_images
    from pixelgen.eval.inception import build_inception
    from pixelgen.eval.metrics import extract_features

    net = build_inception(weights or "random")
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (num_images, 3, 256, 256), dtype=torch.uint8, generator=gen)
    image_set = open_images(images, name="benchmark images")
    net(images[:2])  # warm-up (allocations, kernel selection)
    start = time.perf_counter()
    feats = extract_features(image_set, net, batch_size=batch_size, progress=True, desc="Inception")
    seconds = time.perf_counter() - start
    print(
        f"Inception features, {num_images} images at 256 px (resized to 299), batch {batch_size}, "
        f"{'given' if weights else 'random'} weights: {seconds:.1f} s = {num_images / seconds:.2f} img/s "
        f"(outputs: {', '.join(f'{k} {v.shape[1]}' for k, v in feats.items())})"
    )


def time_sampling(num_samples: int, steps: int, batch_size: int) -> None:
    import pixelgen
    from pixelgen.cli import main
    from pixelgen.eval.generation import class_balanced_labels
    from pixelgen.samplers import build_sampler, generate, sampling_preset

    model = pixelgen.build_model(
        "jit",
        input_size=32,
        patch_size=4,
        in_channels=3,
        hidden_size=64,
        depth=2,
        num_heads=4,
        num_classes=16,
        in_context_len=0,
        in_context_start=0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, out = Path(tmp) / "ckpt", Path(tmp) / "samples"
        pixelgen.save_pretrained(model, ckpt)
        argv = [
            "sample",
            "--checkpoint",
            str(ckpt),
            "--out",
            str(out),
            "--num-samples",
            str(num_samples),
            "--per-class",
            str(num_samples // 16),
            "--preset",
            "xl_cfg",
            "--steps",
            str(steps),
            "--num-classes",
            "16",
            "--batch-size",
            str(batch_size),
            "--shard-size",
            "64",
            "--device",
            "cpu",
            "--no-progress",
        ]
        start = time.perf_counter()
        assert main(argv) == 0
        seconds = time.perf_counter() - start
    # the same images through bare generate(): what the sample path adds (loading, shards, npz, grids)
    preset = sampling_preset("xl_cfg")  # the paper's XL sampler, with fewer steps
    sampler = build_sampler(preset.sampler, **{**preset.params, "num_steps": steps})
    start = time.perf_counter()
    generate(
        model.eval(),
        class_balanced_labels(num_samples, num_samples // 16),
        sampler=sampler,
        batch_size=batch_size,
        progress=False,
    )
    bare = time.perf_counter() - start
    nfe = 2 * steps - 1
    print(
        f"pixelgen sample, tiny JiT (32 px, patch 4, hidden 64, depth 2), {num_samples} images, Heun {steps} steps "
        f"({nfe} NFE, CFG 2.25 on (0.1, 0.9]), batch {batch_size}: {seconds:.1f} s end to end = {num_samples / seconds:.2f} img/s; "
        f"bare generate(): {bare:.1f} s = {num_samples / bare:.2f} img/s"
    )
    print("command: pixelgen " + " ".join(argv))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--inception-weights", default=None, help="real weights (default: random)")
    parser.add_argument("--num-samples", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sample-batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip-inception", action="store_true")
    parser.add_argument("--skip-sampling", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    if not args.skip_inception:
        time_inception(args.num_images, args.batch_size, args.inception_weights)
    if not args.skip_sampling:
        time_sampling(args.num_samples, args.steps, args.sample_batch_size)


if __name__ == "__main__":
    main()
