"""CPU time of one objective evaluation (forward + backward) with and without the perceptual terms, and
what the gated-subset computation saves over computing every sample and masking.

    python benchmarks/objective_cpu.py                     # defaults: 64 px, batch 8, JiT 4x256, ViT-B/14, VGG
    python benchmarks/objective_cpu.py --size 128 --batch 8

Frozen encoders use random weights (their cost does not depend on the values). The batch's times are the
quantiles (k + 0.5)/B of the paper's logit-normal distribution (P(t < 0.3) ≈ 0.48, the share noise gating
drops), fixed, so every run of every configuration does the same work. Two figures per configuration, both the
best of the runs: wall-clock time and the CPU time of this process (all its threads), which other processes on
a shared machine disturb much less; the savings are computed from CPU time. Prints a table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import time

import torch
from tqdm import tqdm

import pixelgen
from pixelgen.encoders import build_encoder
from pixelgen.losses import build_objective

# (label, preset, overrides): each row adds to the one before; the last two isolate the gating computation.
CONFIGS = [
    ("FM + REPA (jit_repa)", "jit_repa", {}),
    ("+ LPIPS, all samples", "jit_repa_lpips", {}),
    ("+ LPIPS + P-DINO, all samples", "jit_repa_lpips_pdino", {}),
    ("pixelgen (P-DINO original), masked", "pixelgen", {"gating_compute": "masked"}),
    ("pixelgen (P-DINO original), subset", "pixelgen", {"gating_compute": "subset"}),
    ("pixelgen (P-DINO intended), masked", "pixelgen", {"gating_compute": "masked", "pdino_gating": "intended"}),
    ("pixelgen (P-DINO intended), subset", "pixelgen", {"gating_compute": "subset", "pdino_gating": "intended"}),
]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64, help="image side in pixels (multiple of 16)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--hidden", type=int, default=256, help="backbone width")
    p.add_argument("--depth", type=int, default=4, help="backbone blocks")
    p.add_argument("--dino", default="dinov2_vitb14", help="DINOv2 variant (random weights)")
    p.add_argument("--lpips", default="vgg", choices=["vgg", "alex", "squeeze"])
    p.add_argument("--repeats", type=int, default=10, help="timed evaluations per configuration")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--threads", type=int, default=1, help="1 keeps CPU time clean: idle OpenMP threads spin and count as CPU time"
    )
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = pixelgen.build_model(
        "jit",
        input_size=args.size,
        patch_size=16,
        hidden_size=args.hidden,
        depth=args.depth,
        num_heads=4,
        num_classes=1000,
        in_context_len=0,
        in_context_start=0,
        bottleneck_dim=32,
    )
    torch.nn.init.normal_(model.final_layer.linear.weight, std=0.02)  # the zero init would make x̂ constant
    encoders = {"dinov2": build_encoder(args.dino, "random"), "lpips": build_encoder("lpips", "random", net=args.lpips)}
    raw = torch.rand(args.batch, 3, args.size, args.size)
    image, labels = raw * 2 - 1, torch.randint(0, 1000, (args.batch,))
    quantiles = (torch.arange(args.batch, dtype=torch.float64) + 0.5) / args.batch
    t = torch.sigmoid(-0.8 + 0.8 * torch.special.ndtri(quantiles)).float()  # stratified logit-normal times
    noise = torch.randn_like(image)
    align = min(8, args.depth // 2)

    objectives = {
        label: build_objective(preset, hidden_size=args.hidden, align_layer=align, encoders=encoders, **overrides)
        for label, preset, overrides in CONFIGS
    }
    # Round-robin over the configurations, so that load from other processes hits all of them alike.
    wall: dict[str, list[float]] = {label: [] for label in objectives}
    cpu: dict[str, list[float]] = {label: [] for label in objectives}
    for i in tqdm(range(args.warmup + args.repeats), desc="repetitions"):
        for label, objective in objectives.items():
            w0, c0 = time.perf_counter(), time.process_time()
            out = objective.evaluate(model, image, raw, labels, t, noise, step=i)
            out["loss"].backward()
            w1, c1 = time.perf_counter(), time.process_time()
            model.zero_grad(set_to_none=True)
            objective.zero_grad(set_to_none=True)
            if i >= args.warmup:
                wall[label].append(w1 - w0)
                cpu[label].append(c1 - c0)
    best = {label: min(ts) for label, ts in cpu.items()}
    base = best[CONFIGS[0][0]]

    print(
        f"\nObjective forward+backward on CPU ({args.threads} threads): JiT {args.depth}x{args.hidden}, {args.size} px, "
        f"batch {args.batch}, {args.dino} + LPIPS-{args.lpips} (random weights), best of {args.repeats} runs"
    )
    print(f"samples gated out (t < 0.3): {int((t < 0.3).sum())} of {args.batch}\n")
    print(f"{'configuration':40s} {'CPU ms':>8s} {'wall ms':>8s} {'x base':>7s}")
    for label in objectives:
        print(f"{label:40s} {best[label] * 1e3:8.1f} {min(wall[label]) * 1e3:8.1f} {best[label] / base:7.2f}")
    for mode in ("original", "intended"):
        masked, subset = best[f"pixelgen (P-DINO {mode}), masked"], best[f"pixelgen (P-DINO {mode}), subset"]
        print(
            f"P-DINO {mode}: the gated subset instead of the masked full batch: {masked * 1e3:.0f} -> {subset * 1e3:.0f} CPU ms, "
            f"{1 - subset / masked:.1%} of the objective's time and {1 - (subset - base) / (masked - base):.1%} of its perceptual part saved"
        )


if __name__ == "__main__":
    main()
