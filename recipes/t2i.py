"""Text-to-image training of PixelGen-XXL/16 in its three stages (spec §6.6, §6.9, §6.10), plus a CPU demo.

    python recipes/t2i.py --preset pretrain256 --data /data/BLIP3o-shards --out runs/t2i/pretrain256
    python recipes/t2i.py --preset pretrain512 --init-from runs/t2i/pretrain256 --data /data/BLIP3o-shards --out runs/t2i/pretrain512
    python recipes/t2i.py --preset sft512 --init-from runs/t2i/pretrain512 --data /data/BLIP3o-60k --out runs/t2i/sft512
    python recipes/t2i.py --preset sft512 --out runs/t2i/sft512 --resume        # continue within a stage
    python recipes/t2i.py --demo                        # tiny, CPU, a few minutes, all three stages
    torchrun --nproc_per_node=8 recipes/t2i.py --preset pretrain256 --data ...   # each rank reads its own shards

Stages (the original's YAMLs, spec §6.6):

| stage | data | res | batch × accum | lr | betas | steps | grid sampler |
|---|---|---|---|---|---|---|---|
| pretrain256 | webdataset shards | 256 | 64 × 3 | 2e-4 | (0.9, 0.95) | 200k | Euler 100, CFG 4 |
| pretrain512 | webdataset shards | 512 | 16 × 4 | 1e-4 | (0.9, 0.95) | +100k | Euler 100, CFG 4 |
| sft512 | caption folder | 512 | 16 × 4 | 1e-5 | (0.9, 0.999) | +60k | Adams-2 25, CFG 4, shift 3 |

All clip gradients at 1.0; AdamW with weight decay 0, constant lr, EMA 0.9999. A stage transition
(``--init-from``: a run folder or its checkpoint) loads the weights, the EMA weights and the REPA projector
into a **new run with a fresh optimiser** built from the stage's own lr and betas, at step 0. The original
resumed the whole Lightning state instead, which silently kept stage 1's optimiser settings (spec §6.6,
§10.1.2). The 512 stages regenerate the sin-cos position table for the 32×32 grid. ``--resume`` continues
the latest checkpoint of the run in ``--out`` (within a stage). Any config field can be changed with
``--set key=value`` (e.g. ``--set optim.lr=5e-5 --set data.batch_size=8``).

The run folder holds ``config.json`` (the trainer's), ``t2i.json`` (text encoder and grid prompts),
``checkpoints/``, ``samples/step_*.png`` (prompts under each image), ``metrics.jsonl``, ``loss_curve.png``
and ``export/`` (EMA weights + ``text_encoder.json``, ready for ``pixelgen generate --checkpoint``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixelgen.train import TrainConfig
from pixelgen.train.config import DataConfig, ModelConfig, ObjectiveConfig, OptimConfig, SampleConfig

log = logging.getLogger("recipes.t2i")

STAGES = ("pretrain256", "pretrain512", "sft512")
NEEDS_INIT = {"pretrain512": "pretrain256", "sft512": "pretrain512"}

GRID_PROMPTS: tuple[str, ...] = (
    "a photo of a cat sitting on a wooden table",
    "a red apple next to a green bottle",
    "an astronaut riding a horse on the moon",
    "a bowl of ramen, studio lighting",
    "three yellow tulips in a blue vase",
    "a lighthouse on a cliff at sunset",
    "a black and white photo of an old train station",
    "a watercolor painting of a fox in the snow",
)

EULER_VALIDATION = {"num_steps": 100, "guidance": 4.0, "timeshift": 1.0}  # validation of both pretraining stages
ADAMS_RELEASE = {"order": 2, "num_steps": 25, "guidance": 4.0, "timeshift": 3.0}  # SFT / GenEval / demo app


@dataclass
class T2ISettings:
    """What a text-to-image run needs beyond :class:`TrainConfig`: the text encoder and the grid prompts.

    ``text_encoder``: a registered conditioner name, a folder or a HF id (``Qwen/Qwen3-1.7B``), or a
    ``describe()`` dict. ``pad_mask``: mask text padding in the backbone (off = the original).
    """

    text_encoder: Any = "Qwen/Qwen3-1.7B"
    pad_mask: bool = False
    prompts: list[str] = field(default_factory=lambda: list(GRID_PROMPTS))

    def to_dict(self) -> dict[str, Any]:
        return {"text_encoder": self.text_encoder, "pad_mask": self.pad_mask, "prompts": list(self.prompts)}


def stage_config(
    stage: str, *, data: str | None = None, out: str | None = None, init_from: str | None = None
) -> TrainConfig:
    """The :class:`TrainConfig` of a stage (spec §6.6); ``data`` is the shard pattern or the SFT folder."""
    if stage not in STAGES:
        raise ValueError(f"Unknown stage {stage!r}; choose one of {', '.join(STAGES)}.")
    res = 256 if stage == "pretrain256" else 512
    model = ModelConfig(name="pixelgen_xxl_16_t2i", overrides={} if res == 256 else {"input_size": 512})
    if stage == "sft512":
        data_config = DataConfig(dataset="caption_folder", root=data, resolution=512, batch_size=16, num_workers=4)
    else:
        data_config = DataConfig(
            dataset="webdataset_captions", root=data, resolution=res, batch_size=64 if res == 256 else 16, num_workers=4,
            options={"shuffle_buffer": 20000, "prefix_p": 0.5},
        )  # fmt: skip
    optim = {
        "pretrain256": OptimConfig(lr=2e-4, betas=(0.9, 0.95), grad_clip=1.0, grad_accum=3),
        "pretrain512": OptimConfig(lr=1e-4, betas=(0.9, 0.95), grad_clip=1.0, grad_accum=4),
        "sft512": OptimConfig(lr=1e-5, betas=(0.9, 0.999), grad_clip=1.0, grad_accum=4),
    }[stage]
    sample = SampleConfig(
        sampler="adams" if stage == "sft512" else "euler",
        params=dict(ADAMS_RELEASE if stage == "sft512" else EULER_VALIDATION),
        every=20_000 if stage == "pretrain256" else 40_000,
        num_images=len(GRID_PROMPTS),
        batch_size=8,
    )
    steps = {"pretrain256": 200_000, "pretrain512": 100_000, "sft512": 60_000}[stage]
    every = 20_000 if stage == "pretrain256" else 10_000
    return TrainConfig(
        model=model,
        objective=ObjectiveConfig(preset="pixelgen"),
        data=data_config,
        optim=optim,
        sample=sample,
        name=f"t2i_{stage}",
        out_dir=out or f"runs/t2i/{stage}",
        max_steps=steps,
        ckpt_every=every,
        keep_every=every,
        log_every=100,
        init_from=init_from,
    )


# -- the CPU demo ----------------------------------------------------------------------------------------
DEMO_TEXT_ENCODER = {"name": "qwen3_tiny_random", "seed": 0}
DEMO_MODEL = dict(
    in_channels=3, patch_size=4, hidden_size=64, num_groups=4, num_blocks=4, num_text_blocks=1,
    txt_embed_dim=64, txt_max_length=128, bottleneck_dim=32,
)  # fmt: skip
DEMO_RES = {"pretrain256": 32, "pretrain512": 64, "sft512": 64}
DEMO_STEPS = {"pretrain256": 200, "pretrain512": 60, "sft512": 40}


def demo_objective_overrides() -> dict[str, Any]:
    """The full PixelGen objective; REPA on block 2 of the tiny backbone; the demo's frozen encoders (real
    weights when found, else a tiny random DINOv2 and a random trunk, with a warning), LPIPS on the AlexNet
    trunk (much cheaper on CPU than VGG, same code path). DINOv2 resizes by 14/patch so its token grid
    matches the backbone's."""
    from pixelgen.train.recipe import demo_encoder_overrides

    return {"align_layer": 2, "encoders": demo_encoder_overrides(DEMO_MODEL["patch_size"], lpips_net="alex")}


def demo_config(
    stage: str, out_root: Path, *, steps: int | None = None, sft_data: Path | None = None, grid_steps: int = 25
) -> TrainConfig:
    """A stage preset scaled down for CPU: tiny backbone, demo captions (SFT: a caption folder written from
    them), batch 8 with accumulation 2, stage lr ×5 (so a few dozen steps show learning), same betas and clip;
    the stage's grid sampler with at most ``grid_steps`` steps."""
    config = stage_config(stage, out=str(out_root / stage))
    res = DEMO_RES[stage]
    config.model = ModelConfig(name="jit_t2i", overrides={**DEMO_MODEL, "input_size": res})
    config.objective.overrides = demo_objective_overrides()
    if stage == "sft512":
        config.data = DataConfig(
            dataset="caption_folder", root=str(sft_data), resolution=res, batch_size=8, num_workers=0
        )
    else:
        config.data = DataConfig(
            dataset="demo_captions", resolution=res, batch_size=8, num_workers=0, options={"samples_per_class": 8}
        )
    config.optim.lr *= 5
    config.optim.grad_accum = 2
    config.max_steps = steps if steps is not None else DEMO_STEPS[stage]
    config.sample.params = {**config.sample.params, "num_steps": min(config.sample.params["num_steps"], grid_steps)}
    config.sample.every = config.max_steps
    config.ckpt_every = config.keep_every = max(1, config.max_steps // 2)
    config.log_every = max(1, min(5, config.max_steps // 2))  # at least two points for the loss curve
    config.ema_decay = 0.95
    config.precision = "fp32"
    config.seed = 0
    config.device = "cpu"
    config.validate()
    return config


def write_demo_caption_folder(folder: Path, resolution: int) -> Path:
    """The demo crops as ``NNNN.png`` + ``NNNN.txt`` caption files (the SFT stage's folder format)."""
    from PIL import Image

    from pixelgen.data import build_dataset

    dataset = build_dataset("demo_captions", resolution=resolution, samples_per_class=4, seed=1)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(len(dataset)):
        sample = dataset[i]
        pixels = (sample["raw"] * 255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
        (folder / f"{i:04d}.txt").write_text(sample["caption"] + "\n")
    return folder


def run_demo(out: Path, *, steps_scale: float = 1.0, grid_steps: int = 25, progress: bool = True) -> dict[str, Any]:
    """All three stages in miniature on CPU; returns a summary (also written to ``<out>/demo_summary.json``)."""
    from pixelgen.data import demo_captions

    out.mkdir(parents=True, exist_ok=True)
    settings = T2ISettings(text_encoder=dict(DEMO_TEXT_ENCODER), prompts=demo_captions()[:8])
    sft_data = write_demo_caption_folder(out / "sft_captions", DEMO_RES["sft512"])
    summary: dict[str, Any] = {"stages": {}}
    start = time.perf_counter()
    previous: Path | None = None
    for stage in STAGES:
        steps = max(2, round(DEMO_STEPS[stage] * steps_scale))
        config = demo_config(stage, out, steps=steps, sft_data=sft_data, grid_steps=grid_steps)
        config.init_from = str(previous) if previous is not None else None
        began = time.perf_counter()
        result = train_stage(config, settings, stage=stage, progress=progress)
        summary["stages"][stage] = {
            "steps": result.step,
            "seconds": round(time.perf_counter() - began, 2),
            "last_loss": result.last_loss,
            "checkpoint": str(result.checkpoint),
            "export": str(result.export_dir),
            "samples": sorted(str(p) for p in (Path(config.out_dir) / "samples").glob("*.png")),
        }
        previous = Path(config.out_dir)
    summary["wall_seconds"] = round(time.perf_counter() - start, 2)
    summary["generate"] = (
        f'pixelgen generate --checkpoint {previous / "export"} --prompt "a photo of a cat" --out {out / "generated"}'
    )
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# -- running a stage -------------------------------------------------------------------------------------
def check_caption_data(dataset: str, root: str | None) -> None:
    """Fail in one sentence before the (large) text encoder loads when the stage's data cannot be found."""
    if not root:
        raise FileNotFoundError(
            "No training data given: pass --data (webdataset shards for pretraining, a caption folder for sft512)."
        )
    if dataset == "caption_folder":
        if not Path(root).expanduser().is_dir():
            raise FileNotFoundError(f"The caption folder {root} does not exist.")
        return
    from pixelgen.data.shards import expand_shards

    expand_shards(root)  # raises when nothing matches


def train_stage(
    config: TrainConfig,
    settings: T2ISettings,
    *,
    stage: str | None = None,
    resume: str | None = None,
    progress: bool = True,
):
    """Train one stage with :class:`~pixelgen.conditioners.training.T2ITrainer`; returns its ``TrainResult``.

    ``resume``: None, ``"auto"`` (the latest checkpoint in the run folder, when there is one) or a path."""
    from pixelgen.conditioners import build_conditioner_from_spec
    from pixelgen.conditioners.training import T2ITrainer
    from pixelgen.train import CheckpointManager
    from pixelgen.train.distributed import training_device

    needs = NEEDS_INIT.get(stage or "")
    if resume == "auto" and CheckpointManager(config.out_dir).find_resume() is None:
        resume = None  # nothing to continue yet: start the stage (from init_from when given)
    if needs and not config.init_from and resume is None:
        raise ValueError(
            f"Stage {stage} starts from a {needs} run: pass --init-from <that run's folder or checkpoint>."
        )
    if config.data.dataset in ("webdataset_captions", "caption_folder"):
        check_caption_data(config.data.dataset, config.data.root)
    # Load the encoder straight onto this rank's training device (bf16 there on CUDA); T2ITrainer checks that
    # its width and token count match the backbone's.
    device = training_device(config.device)
    conditioner = build_conditioner_from_spec(settings.text_encoder, pad_mask=settings.pad_mask, device=device)
    trainer = T2ITrainer(config, conditioner=conditioner, prompts=settings.prompts, resume=resume, progress=progress)
    try:
        if trainer.dist.is_main:
            out = Path(config.out_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / "t2i.json").write_text(
                json.dumps({**settings.to_dict(), "text_encoder": conditioner.describe()}, indent=2) + "\n"
            )
        return trainer.fit()
    finally:
        trainer.close()


PRESETS = {stage: (lambda stage=stage: stage_config(stage)) for stage in STAGES}


def build_parser() -> argparse.ArgumentParser:
    """The shared recipe flags (``--preset`` = the stage, ``--set``, ``--data``, ``--out``, ``--resume``,
    ``--demo`` ...) plus the text-to-image ones."""
    from pixelgen.train.recipe import build_parser as shared_parser

    p = shared_parser(__doc__.splitlines()[0], PRESETS, default="pretrain256")
    p.add_argument(
        "--init-from", help="stage transition: the previous stage's run folder or checkpoint (= --set init_from=...)"
    )
    p.add_argument(
        "--text-encoder", default="Qwen/Qwen3-1.7B", help="conditioner name, folder or HF id (default Qwen/Qwen3-1.7B)"
    )
    p.add_argument(
        "--pad-mask", action="store_true", help="mask text padding tokens in the backbone (off = the original)"
    )
    p.add_argument("--prompts-file", help="sample-grid prompts, one per line")
    p.add_argument("--demo-scale", type=float, default=1.0, help="multiply the demo's step counts (tests use less)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from pixelgen.train.recipe import resolve_config

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.list_presets:
        for stage in STAGES:
            print(stage)
        return 0
    try:
        if args.demo:
            summary = run_demo(
                Path(args.out or "runs/t2i_demo"), steps_scale=args.demo_scale, progress=not args.no_progress
            )
            print(json.dumps(summary, indent=2))
            return 0
        config = resolve_config(args, PRESETS, None)
        if args.init_from:
            config.init_from = args.init_from
        if args.print_config:
            print(config.to_json())
            return 0
        settings = T2ISettings(text_encoder=args.text_encoder, pad_mask=args.pad_mask)
        if args.prompts_file:
            settings.prompts = [
                line.strip() for line in Path(args.prompts_file).read_text().splitlines() if line.strip()
            ]
        result = train_stage(config, settings, stage=args.preset, resume=args.resume, progress=not args.no_progress)
    except (ValueError, KeyError, FileNotFoundError, TypeError) as exc:
        if args.verbose:
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"t2i.py: error: {message}", file=sys.stderr)
        return 2
    print(f"stopped at step {result.step} ({result.stopped}); export: {result.export_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
