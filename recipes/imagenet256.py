#!/usr/bin/env python
"""Train PixelGen on ImageNet 256×256 with the paper's settings (spec §6.6), or a tiny demo on CPU.

    python recipes/imagenet256.py --demo                                    # built-in data, CPU, ~3 minutes
    python recipes/imagenet256.py --data /data/imagenet/train               # PixelGen-XL/16, 800k steps
    torchrun --nproc_per_node=8 recipes/imagenet256.py --data ... --preset pixelgen_l
    python recipes/imagenet256.py --data ... --set optim.lr=2e-4 --set data.batch_size=16 --resume

Presets: ``pixelgen_xl`` (default), ``pixelgen_l``, ``jit_l_baseline`` and the ablation ladder on L/16 for
200k steps (``jit_repa`` → ``jit_repa_lpips`` → ``jit_repa_lpips_pdino`` → ``pixelgen_l``, spec §4.12).
Every field can be changed with ``--set key=value``; the resolved configuration is written to
``<out>/config.json`` next to the checkpoints.
"""

from __future__ import annotations

import argparse
import sys

from pixelgen.train import DataConfig, ModelConfig, ObjectiveConfig, OptimConfig, SampleConfig, TrainConfig
from pixelgen.train.recipe import check_image_folder, demo_encoder_overrides, run_recipe

# Sample-grid samplers of the configs (spec §5.9).
HEUN_XL = {
    "num_steps": 50,
    "timeshift": 2.0,
    "guidance": 2.25,
    "guidance_interval_min": 0.1,
    "guidance_interval_max": 0.9,
    "exact_henu": True,
}
EULER_L = {
    "num_steps": 50,
    "timeshift": 1.0,
    "guidance": 1.0,
    "guidance_interval_min": 0.1,
    "guidance_interval_max": 1.0,
}
# A fixed spread of ImageNet classes for the grids (the same labels and noise at every step, so grids compare).
GRID_LABELS = [88, 207, 279, 360, 387, 417, 972, 979, 1, 130, 250, 291, 292, 323, 812, 980]


def _imagenet(
    model: str, objective: str, *, name: str, max_steps: int, seed: int, sampler: str, params: dict
) -> TrainConfig:
    return TrainConfig(
        name=name,
        out_dir=f"runs/{name}",
        model=ModelConfig(name=model),
        objective=ObjectiveConfig(preset=objective),
        data=DataConfig(dataset="imagenet", resolution=256, batch_size=32, num_workers=4),
        optim=OptimConfig(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, warmup_steps=0, grad_clip=None),
        sample=SampleConfig(
            sampler=sampler, params=dict(params), every=100_000, num_images=16, labels=list(GRID_LABELS), batch_size=16
        ),
        max_steps=max_steps,
        seed=seed,
        ckpt_every=5_000,
        keep_every=100_000,
    )


def pixelgen_xl() -> TrainConfig:
    """PixelGen-XL/16 (677M): full objective, 800k steps (160 epochs at 8×32), Heun-50 CFG 2.25 grids, seed 1234."""
    return _imagenet(
        "pixelgen_xl_16", "pixelgen", name="pixelgen_xl", max_steps=800_000, seed=1234, sampler="heun", params=HEUN_XL
    )


def pixelgen_l() -> TrainConfig:
    """PixelGen-L/16 (459M): full objective, 200k steps, Euler-50 grids without CFG."""
    return _imagenet(
        "pixelgen_l_16", "pixelgen", name="pixelgen_l", max_steps=200_000, seed=0, sampler="euler", params=EULER_L
    )


def jit_l_baseline() -> TrainConfig:
    """JiT-L/16 + REPA baseline (JiT_Large_Baseline): flow matching + REPA only, 200k steps."""
    return _imagenet(
        "jit_l_16", "jit_repa", name="jit_l_baseline", max_steps=200_000, seed=0, sampler="euler", params=EULER_L
    )


def jit_repa() -> TrainConfig:
    """Ablation rung 1 (L/16, 200k): JiT + REPA (= jit_l_baseline)."""
    return _imagenet(
        "pixelgen_l_16", "jit_repa", name="jit_repa", max_steps=200_000, seed=0, sampler="euler", params=EULER_L
    )


def jit_repa_lpips() -> TrainConfig:
    """Ablation rung 2 (L/16, 200k): + LPIPS on all samples (λ 1.0, as that trainer's default)."""
    return _imagenet(
        "pixelgen_l_16",
        "jit_repa_lpips",
        name="jit_repa_lpips",
        max_steps=200_000,
        seed=0,
        sampler="euler",
        params=EULER_L,
    )


def jit_repa_lpips_pdino() -> TrainConfig:
    """Ablation rung 3 (L/16, 200k): + LPIPS + P-DINO on all samples (no noise gating)."""
    return _imagenet(
        "pixelgen_l_16",
        "jit_repa_lpips_pdino",
        name="jit_repa_lpips_pdino",
        max_steps=200_000,
        seed=0,
        sampler="euler",
        params=EULER_L,
    )


PRESETS = {
    "pixelgen_xl": pixelgen_xl,
    "pixelgen_l": pixelgen_l,
    "jit_l_baseline": jit_l_baseline,
    "jit_repa": jit_repa,
    "jit_repa_lpips": jit_repa_lpips,
    "+lpips": jit_repa_lpips,
    "jit_repa_lpips_pdino": jit_repa_lpips_pdino,
    "+lpips+pdino": jit_repa_lpips_pdino,
}

DEMO_PATCH = 4


def demo() -> TrainConfig:
    """A tiny JiT on the built-in 32 px demo set, on CPU: the same code path as the real recipe, in minutes."""
    return TrainConfig(
        name="demo",
        out_dir="runs/demo",
        model=ModelConfig(
            name="jit",
            overrides=dict(
                input_size=32,
                patch_size=DEMO_PATCH,
                hidden_size=96,
                depth=4,
                num_heads=4,
                num_classes=10,
                bottleneck_dim=32,
                in_context_len=4,
                in_context_start=2,
            ),
        ),
        objective=ObjectiveConfig(preset="pixelgen", overrides={"align_layer": 2}),
        data=DataConfig(dataset="demo", resolution=32, batch_size=16, num_workers=0),
        optim=OptimConfig(lr=1e-3, warmup_steps=20),
        sample=SampleConfig(
            sampler="heun",
            params={
                "num_steps": 10,
                "timeshift": 2.0,
                "guidance": 2.0,
                "guidance_interval_min": 0.1,
                "guidance_interval_max": 0.9,
                "exact_henu": True,
            },
            every=250,
            num_images=20,
            labels=[i % 10 for i in range(20)],
            batch_size=20,
        ),
        max_steps=1000,  # about 2 minutes on 2 cores; the grids show the classes emerge (step 250 ... 1000)
        seed=1234,
        precision="fp32",
        device="cpu",
        num_threads=1,  # the tensors are tiny: one thread is as fast, and far faster when the cores are shared
        ema_decay=0.99,
        ckpt_every=100,
        keep_every=10_000,
        log_every=10,
    )


def prepare(config: TrainConfig, args: argparse.Namespace) -> TrainConfig:
    """Check the data folder (real runs) or pick the demo's frozen encoders (real weights if found)."""
    if args.demo:
        if "encoders" not in config.objective.overrides:
            # LPIPS on the AlexNet trunk in the demo: ~20x cheaper on CPU than the paper's VGG, same code path.
            patch = int(config.model.overrides.get("patch_size", DEMO_PATCH))
            config.objective.overrides["encoders"] = demo_encoder_overrides(patch, lpips_net="alex")
    elif config.data.dataset == "imagenet" and not args.print_config:
        check_image_folder(config.data.root)
    return config


def main(argv: list[str] | None = None) -> int:
    return run_recipe(
        PRESETS,
        default="pixelgen_xl",
        description=__doc__.splitlines()[0],
        demo=demo,
        argv=argv,
        prepare=prepare,
        prog="imagenet256.py",
    )


if __name__ == "__main__":
    sys.exit(main())
