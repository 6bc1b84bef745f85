"""Cost of post-hoc EMA snapshots: bytes per snapshot of a preset (from its parameter count, no memory used) and
the time of one snapshot save measured on a small model, extrapolated to the preset by bytes.

    python benchmarks/posthoc_ema_cpu.py [--preset pixelgen_xl_16] [--hidden 384 --depth 6] [--repeats 5]

The extrapolation assumes the save is bound by bytes written (file system throughput); on a GPU the copy of
the averages to host memory comes on top. It prints measured and extrapolated figures separately.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

import pixelgen
from pixelgen.train.posthoc_ema import SNAPSHOT_DTYPES, PostHocEMA


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="pixelgen_xl_16")
    p.add_argument("--hidden", type=int, default=384, help="width of the measured model")
    p.add_argument("--depth", type=int, default=6, help="depth of the measured model")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--widths", type=int, default=2, help="tracked widths")
    args = p.parse_args()
    torch.set_num_threads(1)

    meta = pixelgen.build_model(args.preset, device="meta")
    trainable = sum(t.numel() for t in meta.parameters() if t.requires_grad)
    total = sum(t.numel() for t in meta.state_dict().values())
    print(f"{args.preset}: {trainable / 1e6:.1f}M trainable parameters, {total / 1e6:.1f}M numbers in the state")
    for name, dtype in SNAPSHOT_DTYPES.items():
        per_width = total * dtype.itemsize
        print(
            f"  snapshot in {name}: {per_width / 2**30:.2f} GiB per width, "
            f"{args.widths * per_width / 2**30:.2f} GiB per snapshot step ({args.widths} widths)"
        )
    full = trainable * 4 * 4  # model, classic EMA, AdamW m and v (fp32)
    print(
        f"  for scale: a full training checkpoint is about {full / 2**30:.1f} GiB (+ post-hoc EMA state, "
        f"{args.widths * trainable * 4 / 2**30:.1f} GiB fp32, when on)"
    )

    small = pixelgen.build_model(
        "jit", input_size=256, patch_size=16, hidden_size=args.hidden, depth=args.depth, num_heads=6, num_classes=1000
    )
    ema = PostHocEMA(small, [0.05, 0.1][: args.widths] + [0.15] * max(0, args.widths - 2), every=1)
    ema.update(1)
    numbers = sum(t.numel() for t in small.state_dict().values())
    for name in ("fp32", "fp16"):
        ema.dtype = name
        with tempfile.TemporaryDirectory() as tmp:
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                paths = ema.save_snapshot(tmp, 1)
                times.append(time.perf_counter() - start)
            size = sum(q.stat().st_size for q in paths)
        best = min(times)
        rate = size / best
        extrapolated = args.widths * total * SNAPSHOT_DTYPES[name].itemsize / rate
        print(
            f"measured ({numbers / 1e6:.1f}M-number model, {name}): {size / 2**20:.1f} MiB per snapshot step in "
            f"{best * 1e3:.0f} ms (best of {args.repeats}), {rate / 2**20:.0f} MiB/s; extrapolated by bytes to "
            f"{args.preset}: {extrapolated:.1f} s per snapshot step"
        )


if __name__ == "__main__":
    main()
