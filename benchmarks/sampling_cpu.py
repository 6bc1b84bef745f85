"""Sampling cost on CPU: network rows per image, and wall time of a tiny JiT, against the original's scheme.

    python benchmarks/sampling_cpu.py                        # tiny JiT, batch 8, 3 repeats
    python benchmarks/sampling_cpu.py --batch 16 --repeats 5 --threads 2

Part 1 (no network, exact counts): rows per image of the paper's two XL settings (Heun 50, exact, shift 2,
guidance 1.0 and 2.25 on (0.1, 0.9]), where the original pushes 2 rows per evaluation, always.

Part 2 (timed): Euler / Heun / Adams with and without guidance on a tiny JiT with random weights. "ours" is
pixelgen's sampler; "original scheme" runs the same sampler through a wrapper that doubles every
unguided evaluation (a discarded copy of the batch), i.e. the cost of the original's always-doubled batch.
After one warm-up round, the two run alternately and each keeps its best time over the repeats (load from
other processes on a shared machine only ever adds time). Prints tables; nothing is asserted.
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import torch

from pixelgen import build_model
from pixelgen.samplers import build_sampler, sampling_preset

TINY = dict(
    input_size=32,
    patch_size=4,
    hidden_size=96,
    depth=4,
    num_heads=4,
    num_classes=10,
    in_context_len=4,
    in_context_start=1,
)

XL_SETTINGS = {  # the paper's XL settings, read from the registered sampling presets
    "XL, guidance 1.0": dict(sampling_preset("xl_nocfg").params),
    "XL, guidance 2.25": dict(sampling_preset("xl_cfg").params),
}

TIMED = {
    "euler 50": ("euler", dict(num_steps=50)),
    "euler 50, cfg 2.0 (0.1, 0.9]": (
        "euler",
        dict(num_steps=50, guidance=2.0, guidance_interval_min=0.1, guidance_interval_max=0.9),
    ),
    "heun 50 exact": ("heun", dict(num_steps=50, timeshift=2.0)),
    "heun 50 exact, cfg 2.25 (0.1, 0.9]": ("heun", XL_SETTINGS["XL, guidance 2.25"]),
    "adams-2 25": ("adams", dict(num_steps=25, order=2, timeshift=3.0)),
    "adams-2 25, cfg 4.0 (0, 1)": ("adams", dict(num_steps=25, order=2, timeshift=3.0, guidance=4.0)),
}


class AlwaysDoubled:
    """The original's cost model: an unguided evaluation still runs a (discarded) second copy of the batch."""

    def __init__(self, model: torch.nn.Module, batch: int):
        self.model = model
        self.batch = batch

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 2 * self.batch:  # a guided evaluation is already doubled
            return self.model(x, t, cond)
        return self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, cond]))[x.shape[0] :]


def rows_per_image() -> None:
    print("Rows through the network per image (exact counts)")
    print(f"{'setting':<20} {'NFE':>4} {'guided steps':>13} {'ours':>6} {'original':>9} {'saved':>7}")
    for name, params in XL_SETTINGS.items():
        sampler = build_sampler(sampling_preset("xl_cfg").sampler, **params)
        sampler(lambda x, t, c: x, torch.zeros(1, 1), torch.tensor([1]), torch.tensor([0]))
        nfe, rows = sampler.last_stats["nfe"], sampler.last_stats["rows"]
        original = 2 * nfe
        print(
            f"{name:<20} {nfe:>4} {sum(sampler.guided_steps()):>10}/50 {rows:>6} {original:>9} {1 - rows / original:>6.0%}"
        )
    print()


def timed(batch: int, repeats: int) -> None:
    torch.manual_seed(0)
    model = build_model("jit", **TINY).eval()
    with torch.no_grad():  # random weights everywhere (the zero-initialised output layers too)
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    noise = torch.randn(batch, 3, TINY["input_size"], TINY["input_size"])
    labels = torch.arange(batch) % TINY["num_classes"]
    null = torch.full_like(labels, TINY["num_classes"])
    doubled = AlwaysDoubled(model, batch)

    def best_times(sampler, denoisers) -> list[float]:
        best = [math.inf] * len(denoisers)
        for round_ in range(repeats + 1):  # round 0 warms up
            for k, denoiser in enumerate(denoisers):
                start = time.perf_counter()
                sampler(denoiser, noise, labels, null)
                if round_:
                    best[k] = min(best[k], time.perf_counter() - start)
        return best

    print(
        f"Tiny JiT {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, {TINY['input_size']} px, "
        f"batch {batch}, best of {repeats} (torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()})"
    )
    print(
        f"{'sampler':<36} {'NFE':>4} {'rows/img':>9} {'ours s':>8} {'orig. scheme s':>15} {'speed-up':>9} {'img/s':>7}"
    )
    with torch.inference_mode():
        for label, (name, params) in TIMED.items():
            sampler = build_sampler(name, **params)
            ours, original = best_times(sampler, [model, doubled])
            stats = sampler.last_stats  # the sampler's own counts: the doubling happens inside the wrapper
            print(
                f"{label:<36} {stats['nfe']:>4} {stats['rows'] / batch:>9.0f} {ours:>8.3f} {original:>15.3f} "
                f"{original / ours:>8.2f}x {batch / ours:>7.1f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows_per_image()
    timed(args.batch, args.repeats)


if __name__ == "__main__":
    main()
