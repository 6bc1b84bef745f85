"""Registered training presets (``registries.train_preset``): ImageNet, the text-to-image stages, small data.

``build_train_preset(name)`` returns a :class:`~pixelgen.train.config.TrainConfig`, or a list of them for a
preset that runs several stages in order (``t2i_demo``: each stage starts from the previous one's weights).
``pixelgen train --preset NAME`` and the scripts in ``recipes/`` use these; ``pixelgen list train_preset``
lists them. Register your own with ``@registries.train_preset.register("name")`` on a function returning a
config.

Metadata of an entry: ``task`` (``"class"`` or ``"text"``), ``needs_init`` (the stage a text-to-image stage
starts from), ``adapts_to_data`` (``--data`` sets the class count and class names of the model from the
folder; otherwise the model keeps its class count, which must cover the data's).
"""

from __future__ import annotations

import copy
import functools
import logging
from pathlib import Path
from typing import Any

from ..registry import registries
from .config import DataConfig, ModelConfig, ObjectiveConfig, OptimConfig, SampleConfig, TextConfig, TrainConfig

__all__ = [
    "GRID_LABELS",
    "GRID_PROMPTS",
    "T2I_STAGES",
    "build_train_preset",
    "demo_encoder_overrides",
    "list_train_presets",
    "register_train_preset",
    "t2i_demo_stage",
    "t2i_stage",
    "write_demo_caption_folder",
]

log = logging.getLogger(__name__)

register_train_preset = registries.train_preset.register


def build_train_preset(name: str, /, **kwargs: Any) -> TrainConfig | list[TrainConfig]:
    """The config (or the list of stage configs) of the training preset registered as ``name``."""
    return registries.train_preset.build(name, **kwargs)


def list_train_presets(pattern: str = "*") -> list[str]:
    return registries.train_preset.list(pattern)


# -- sample-grid samplers: the registered sampling presets -------------------------------------------------
def _sampling(name: str) -> dict[str, Any]:
    from ..samplers.presets import sampling_preset

    return dict(sampling_preset(name).params)


HEUN_XL = _sampling("xl_cfg")
EULER_L = _sampling("l_euler50")
# A fixed spread of ImageNet classes for the grids (the same labels and noise at every step, so grids compare).
GRID_LABELS = [88, 207, 279, 360, 387, 417, 972, 979, 1, 130, 250, 291, 292, 323, 812, 980]


# -- ImageNet 256 -----------------------------------------------------------------------------------------------
def _imagenet(model: str, objective: str, *, name: str, max_steps: int, seed: int, sampler: str, params: dict):
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


@register_train_preset("pixelgen_xl", task="class")
def pixelgen_xl() -> TrainConfig:
    """PixelGen-XL/16 (677M) on ImageNet 256: full objective, 800k steps, Heun-50 CFG 2.25 grids, seed 1234."""
    return _imagenet(
        "pixelgen_xl_16", "pixelgen", name="pixelgen_xl", max_steps=800_000, seed=1234, sampler="heun", params=HEUN_XL
    )


@register_train_preset("pixelgen_l", task="class")
def pixelgen_l() -> TrainConfig:
    """PixelGen-L/16 (459M) on ImageNet 256: full objective, 200k steps, Euler-50 grids without CFG."""
    return _imagenet(
        "pixelgen_l_16", "pixelgen", name="pixelgen_l", max_steps=200_000, seed=0, sampler="euler", params=EULER_L
    )


@register_train_preset("jit_l_baseline", task="class")
def jit_l_baseline() -> TrainConfig:
    """JiT-L/16 + REPA baseline on ImageNet 256: flow matching + REPA only, 200k steps."""
    return _imagenet(
        "jit_l_16", "jit_repa", name="jit_l_baseline", max_steps=200_000, seed=0, sampler="euler", params=EULER_L
    )


@register_train_preset("jit_repa", task="class")
def jit_repa() -> TrainConfig:
    """Ablation rung 1 (L/16, 200k): JiT + REPA."""
    return _imagenet(
        "pixelgen_l_16", "jit_repa", name="jit_repa", max_steps=200_000, seed=0, sampler="euler", params=EULER_L
    )


@register_train_preset("jit_repa_lpips", task="class")
def jit_repa_lpips() -> TrainConfig:
    """Ablation rung 2 (L/16, 200k): + LPIPS on all samples (λ 1.0); alias +lpips."""
    return _imagenet(
        "pixelgen_l_16", "jit_repa_lpips", name="jit_repa_lpips", max_steps=200_000, seed=0, sampler="euler",
        params=EULER_L,
    )  # fmt: skip


@register_train_preset("jit_repa_lpips_pdino", task="class")
def jit_repa_lpips_pdino() -> TrainConfig:
    """Ablation rung 3 (L/16, 200k): + LPIPS + P-DINO on all samples (no noise gating); alias +lpips+pdino."""
    return _imagenet(
        "pixelgen_l_16", "jit_repa_lpips_pdino", name="jit_repa_lpips_pdino", max_steps=200_000, seed=0,
        sampler="euler", params=EULER_L,
    )  # fmt: skip


register_train_preset("+lpips", task="class")(jit_repa_lpips)
register_train_preset("+lpips+pdino", task="class")(jit_repa_lpips_pdino)


# -- frozen encoders for CPU-sized runs ----------------------------------------------------------------------
def demo_encoder_overrides(patch_size: int, *, dino: str = "dinov2_vitb14", lpips_net: str = "alex") -> dict:
    """See :func:`_demo_encoders` (the weight search and its warnings run once per process and setting)."""
    return copy.deepcopy(_demo_encoders(patch_size, dino, lpips_net))


@functools.cache
def _demo_encoders(patch_size: int, dino: str, lpips_net: str) -> dict:
    """Frozen-encoder settings for small and demo runs: the real weights when they can be found (or downloaded);
    otherwise random weights (a tiny DINOv2) with a warning, so the run still exercises every code path.

    LPIPS on the AlexNet trunk by default: about 20x cheaper on CPU than the paper's VGG, same code path.
    DINOv2 resizes by 14/patch so its token grid matches the backbone's."""
    from ..encoders.dinov2 import dinov2_weight_source
    from ..encoders.lpips_net import lpips_weight_source
    from ..utils.hub import WeightsNotFoundError, resolve_weights

    encoders: dict[str, dict] = {}
    try:
        resolve_weights(dinov2_weight_source(dino))
        encoders["dinov2"] = {"name": dino, "base_patch_size": patch_size}
        log.info("Using the real %s weights (slower on CPU than the tiny random stand-in).", dino)
    except WeightsNotFoundError:
        log.warning(
            "No %s weights found (offline or not cached), so REPA and P-DINO use a tiny DINOv2 with RANDOM "
            "weights. The run exercises the code path, but those losses are not meaningful.",
            dino,
        )
        encoders["dinov2"] = {
            "name": dino,
            "weights": "random",
            "base_patch_size": patch_size,
            "model_overrides": {"embed_dim": 64, "depth": 2, "num_heads": 2},
        }
    try:
        resolve_weights(lpips_weight_source(lpips_net))
        encoders["lpips"] = {"net": lpips_net}
    except WeightsNotFoundError:
        log.warning(
            "No ImageNet weights for the LPIPS %s trunk found, so LPIPS uses a RANDOM trunk (its linear heads "
            "from the lpips package are real). The LPIPS loss is not meaningful in this run.",
            lpips_net,
        )
        encoders["lpips"] = {"net": lpips_net, "weights": "random"}
    return encoders


# -- small data and the demo -------------------------------------------------------------------------------
def _small(
    name: str, resolution: int, patch: int, *, num_classes: int = 10, dataset: str = "imagenet", encoders: bool = True
) -> TrainConfig:
    """A JiT sized for a few thousand images and one GPU (or a patient CPU): 8 blocks of width 256."""
    depth = 8
    objective = {"align_layer": depth // 2}
    if encoders:
        objective["encoders"] = demo_encoder_overrides(patch)
    return TrainConfig(
        name=name,
        out_dir=f"runs/{name}",
        model=ModelConfig(
            name="jit",
            overrides=dict(
                input_size=resolution,
                patch_size=patch,
                hidden_size=256,
                depth=depth,
                num_heads=4,
                num_classes=num_classes,
                bottleneck_dim=64,
                in_context_len=4,
                in_context_start=2,
            ),
        ),  # fmt: skip
        objective=ObjectiveConfig(preset="pixelgen", overrides=objective),
        data=DataConfig(dataset=dataset, resolution=resolution, batch_size=64, num_workers=2),
        optim=OptimConfig(lr=2e-4, warmup_steps=500),
        sample=SampleConfig(sampler="heun", params={**HEUN_XL, "num_steps": 25}, every=5_000, num_images=16),
        max_steps=50_000,
        seed=0,
        ema_decay=0.999,
        ckpt_every=1_000,
        keep_every=10_000,
        log_every=50,
    )


@register_train_preset("small_32", task="class", adapts_to_data=True)
def small_32() -> TrainConfig:
    """A small JiT (8 x 256, patch 4: 8x8 tokens) for your own 32-px class folders (`--data DIR`)."""
    return _small("small_32", 32, 4)


@register_train_preset("small_64", task="class", adapts_to_data=True)
def small_64() -> TrainConfig:
    """A small JiT (8 x 256, patch 8: 8x8 tokens) for your own 64-px class folders (`--data DIR`)."""
    return _small("small_64", 64, 8)


@register_train_preset("imagenet64", task="class")
def imagenet64() -> TrainConfig:
    """JiT-B at 64 px on ImageNet (patch 4: 16x16 tokens), full objective, 200k steps, Heun-50 CFG grids."""
    config = _imagenet(
        "jit_b_16", "pixelgen", name="imagenet64", max_steps=200_000, seed=0, sampler="heun", params=HEUN_XL
    )
    config.model.overrides = {"input_size": 64, "patch_size": 4}
    config.data.resolution = 64
    config.data.batch_size = 128
    # The frozen DINOv2 sees 224-px images: resize by 14/4 so its 16x16 token grid matches the backbone's.
    config.objective.overrides = {"encoders": {"dinov2": {"base_patch_size": 4}}}
    config.validate()
    return config


DEMO_PATCH = 4


@register_train_preset("demo", task="class", adapts_to_data=True)
def demo() -> TrainConfig:
    """A tiny JiT on the built-in 32 px demo set, on CPU: the code path of the real recipe, in minutes."""
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
        ),  # fmt: skip
        # Plain flow matching: offline, REPA and the perceptual terms read random-weight encoders, which measured
        # no better samples here at 1.8x the step time (``demo_pixelgen`` keeps them).
        objective=ObjectiveConfig(preset="pixelgen", overrides={"align_layer": 2, "losses": ["flow_matching"]}),
        # Whole photographs (the centre square; wide ones shift sideways), one per class: a tiny model learns to
        # draw each class in minutes.
        data=DataConfig(
            dataset="demo", resolution=32, batch_size=16, num_workers=0, options={"crop_scale": [1.0, 1.0]}
        ),
        optim=OptimConfig(lr=2e-3, warmup_steps=20),
        sample=SampleConfig(
            sampler="heun",
            params={**HEUN_XL, "num_steps": 10, "guidance": 2.0},
            every=850,
            num_images=20,
            labels=[i % 10 for i in range(20)],
            batch_size=20,
        ),
        # Plain flow matching steps take ~0.55x the full objective's: 1700 of them cost about what 1000 did before.
        max_steps=1700,
        seed=1234,
        precision="fp32",
        device="cpu",
        num_threads=1,  # the tensors are tiny: one thread is as fast, and far faster when the cores are shared
        ema_decay=0.99,
        ckpt_every=100,
        keep_every=10_000,
        log_every=10,
    )


@register_train_preset("demo_pixelgen", task="class", adapts_to_data=True)
def demo_pixelgen() -> TrainConfig:
    """The demo with the full PixelGen objective (REPA, LPIPS, P-DINO; random-weight encoders when offline)."""
    config = demo()
    config.name, config.out_dir = "demo_pixelgen", "runs/demo_pixelgen"
    config.objective.overrides = {"align_layer": 2, "encoders": demo_encoder_overrides(DEMO_PATCH)}
    return config


# -- text-to-image: PixelGen-XXL/16 in three stages --------------------------------------------------------------
T2I_STAGES = ("pretrain256", "pretrain512", "sft512")
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
EULER_VALIDATION = _sampling("t2i_validation")  # validation of both pretraining stages
ADAMS_RELEASE = _sampling("t2i_default")  # SFT / GenEval / demo app


def t2i_stage(
    stage: str, *, data: str | None = None, out: str | None = None, init_from: str | None = None
) -> TrainConfig:
    """The :class:`TrainConfig` of a text-to-image stage; ``data`` is the shard pattern or the SFT folder."""
    if stage not in T2I_STAGES:
        raise ValueError(f"Unknown stage {stage!r}; choose one of {', '.join(T2I_STAGES)}.")
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
        text=TextConfig(encoder="Qwen/Qwen3-1.7B", prompts=list(GRID_PROMPTS)),
    )


for _stage, _doc in (
    ("pretrain256", "Text-to-image stage 1: PixelGen-XXL/16 at 256 px on caption shards, 200k steps."),
    ("pretrain512", "Text-to-image stage 2: 512 px from a pretrain256 run (--init-from), +100k steps."),
    ("sft512", "Text-to-image stage 3: fine-tuning at 512 px on a caption folder (--init-from), +60k steps."),
):

    def _builder(stage: str = _stage) -> TrainConfig:
        return t2i_stage(stage)

    _builder.__doc__ = _doc
    registries.train_preset.register(_stage, task="text", needs_init=NEEDS_INIT.get(_stage))(_builder)


# The CPU demo of the three stages.
DEMO_TEXT_ENCODER = {"name": "qwen3_tiny_random", "seed": 0}
DEMO_T2I_MODEL = dict(
    in_channels=3, patch_size=4, hidden_size=64, num_groups=4, num_blocks=4, num_text_blocks=1,
    txt_embed_dim=64, txt_max_length=128, bottleneck_dim=32,
)  # fmt: skip
DEMO_RES = {"pretrain256": 32, "pretrain512": 64, "sft512": 64}
DEMO_STEPS = {"pretrain256": 200, "pretrain512": 60, "sft512": 40}


def t2i_demo_stage(
    stage: str, out_root: str | Path = "runs/t2i_demo", *, steps: int | None = None, grid_steps: int = 25
) -> TrainConfig:
    """A stage scaled down for CPU: tiny backbone, demo captions (SFT: a caption folder written from them at
    start-up, ``<out_root>/sft_captions``), batch 8 with accumulation 2, stage lr x5 (so a few dozen steps show
    learning), the stage's grid sampler with at most ``grid_steps`` steps, and the previous demo stage's run
    folder as ``init_from``."""
    from ..data import demo_captions

    out_root = Path(out_root)
    config = t2i_stage(stage, out=str(out_root / stage))
    res = DEMO_RES[stage]
    config.model = ModelConfig(name="jit_t2i", overrides={**DEMO_T2I_MODEL, "input_size": res})
    config.objective.overrides = {
        "align_layer": 2,
        "encoders": demo_encoder_overrides(DEMO_T2I_MODEL["patch_size"]),
    }
    if stage == "sft512":
        config.data = DataConfig(
            dataset="caption_folder", root=str(out_root / "sft_captions"), resolution=res, batch_size=8,
            num_workers=0, options={},
        )  # fmt: skip
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
    previous = NEEDS_INIT.get(stage)
    config.init_from = str(out_root / previous) if previous else None
    config.text = TextConfig(encoder=dict(DEMO_TEXT_ENCODER), prompts=demo_captions()[:8])
    config.validate()
    return config


@register_train_preset("t2i_demo", task="text", stages=T2I_STAGES)
def t2i_demo(out_root: str = "runs/t2i_demo", steps_scale: float = 1.0, grid_steps: int = 25) -> list[TrainConfig]:
    """The three text-to-image stages in miniature on CPU (tiny random Qwen3, demo captions), a few minutes."""
    if isinstance(steps_scale, bool) or not isinstance(steps_scale, (int, float)) or not steps_scale > 0:
        raise ValueError(f"steps_scale (--demo-scale) must be a positive number, got {steps_scale!r}.")
    return [
        t2i_demo_stage(stage, out_root, steps=max(2, round(DEMO_STEPS[stage] * steps_scale)), grid_steps=grid_steps)
        for stage in T2I_STAGES
    ]


def write_demo_caption_folder(folder: str | Path, resolution: int) -> Path:
    """The demo crops as ``NNNN.png`` + ``NNNN.txt`` caption files (the SFT stage's folder format)."""
    from PIL import Image

    from ..data import build_dataset

    folder = Path(folder)
    dataset = build_dataset("demo_captions", resolution=resolution, samples_per_class=4, seed=1)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(len(dataset)):
        sample = dataset[i]
        pixels = (sample["raw"] * 255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
        (folder / f"{i:04d}.txt").write_text(sample["caption"] + "\n")
    return folder
