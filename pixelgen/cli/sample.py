"""``pixelgen sample --checkpoint DIR --out DIR``: a class-balanced sample set in the ADM format (resumable),
or, for a text-to-image checkpoint, the images of a GenEval (``--geneval``) or DPG-Bench (``--dpg``) prompt set.

Examples::

    pixelgen sample --checkpoint ckpts/pixelgen_xl_160ep --preset xl_cfg --out samples/xl_cfg
    torchrun --nproc_per_node=8 -m pixelgen.cli sample --checkpoint ... --preset xl_cfg --out ...
    pixelgen sample --checkpoint DIR --num-samples 50000 --per-class 50 --sampler heun --steps 50 \\
        --guidance 2.25 --interval 0.1 0.9 --shift 2 --out DIR
    pixelgen sample --checkpoint T2I_DIR --geneval evaluation_metadata.jsonl --out geneval_images
    pixelgen sample --checkpoint T2I_DIR --dpg dpg_bench/prompts --out dpg_images
"""

from __future__ import annotations

import logging

from .common import (
    add_sampler_step_arguments,
    apply_sampler_step_arguments,
    finite_float,
    non_negative_int,
    positive_int,
)

HELP = (
    "generate a class-balanced sample set (samples.npz, ADM format) from a checkpoint; resumable, torchrun-distributed"
)

log = logging.getLogger("pixelgen.sample")


def add_parser(subparsers):
    from pixelgen.registry import registries

    p = subparsers.add_parser("sample", help=HELP, description=HELP)

    p.add_argument("--checkpoint", required=True, help="folder written by save_pretrained / `pixelgen convert`")
    p.add_argument("--out", required=True, help="output folder (shards, samples.npz, grids, run.json)")
    p.add_argument(
        "--preset",
        choices=registries.sampling_preset.list(),
        help="the paper's settings: xl_cfg (Heun 50, CFG 2.25 on (0.1, 0.9], shift 2), xl_nocfg (same, no CFG), l_euler50 (Euler 50), t2i_default (Adams-2 25, CFG 4, shift 3)",
    )
    p.add_argument(
        "--num-samples",
        type=positive_int,
        help="number of samples (default: per-class x the checkpoint's classes; presets: 50000)",
    )
    p.add_argument(
        "--per-class", type=positive_int, help="samples per class; sample i has class i // per-class (default 50)"
    )
    p.add_argument("--num-classes", type=positive_int, help="class count the checkpoint must have (presets: 1000)")
    p.add_argument("--sampler", help="registered sampler name (default heun)")
    add_sampler_step_arguments(p)
    p.add_argument("--guidance", type=finite_float, help="CFG scale (default 1.0)")
    p.add_argument(
        "--interval",
        type=finite_float,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="guidance interval (t_min, t_max] (default 0 1)",
    )
    p.add_argument(
        "--seed", type=non_negative_int, default=0, help="global seed; sample i's noise depends on (seed, i) only"
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=32, help="images per network batch (does not change the images)"
    )
    p.add_argument("--shard-size", type=positive_int, default=1000, help="images per resumable shard")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda:<LOCAL_RANK> when available)")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="network precision: fp32, or bf16 autocast (low FIDs move with it; recorded in run.json)",
    )
    p.add_argument(
        "--max-shards", type=positive_int, default=None, help="stop after this many new shards (rerun to continue)"
    )
    p.add_argument(
        "--rank", type=non_negative_int, default=None, help="this job's index for independent jobs without torchrun"
    )
    p.add_argument("--world-size", type=positive_int, default=None, help="number of independent jobs without torchrun")
    p.add_argument("--keep-shards", action="store_true", help="keep the shard files after samples.npz is written")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    t2i = p.add_argument_group(
        "text-to-image prompt sets (default sampler: adams order 2, 25 steps, guidance 4, shift 3)"
    )
    t2i.add_argument(
        "--geneval",
        metavar="JSONL",
        help="GenEval metadata file: 4 images per prompt (seeds 0-3) in <out>/<index>/samples/",
    )
    t2i.add_argument(
        "--dpg", metavar="DIR", help="DPG-Bench prompt folder (.txt, first line = prompt): 2x2 tiles <out>/<stem>.png"
    )
    t2i.add_argument(
        "--text-encoder",
        default=None,
        help="text encoder (registered name, folder or HF id; default: the checkpoint's)",
    )
    t2i.add_argument("--negative-prompt", default=None, help="prompt of the unconditional branch (default: empty)")
    return p


def _settings(args, num_classes: int, base=None) -> tuple[str, dict, int, int, int | None]:
    """(sampler, params, num, per_class, expected classes): explicit arguments over the preset over ``base``
    (a :class:`~pixelgen.samplers.SamplingPreset`); the preset's parameters the sampler does not take are left out."""
    from pixelgen.samplers import SamplingPreset, sampler_parameters, sampling_preset

    preset = sampling_preset(args.preset) if args.preset else (base or SamplingPreset("heun"))
    sampler = args.sampler or preset.sampler
    params = {k: v for k, v in preset.params.items() if k in sampler_parameters(sampler)}
    params.setdefault("num_steps", 50)
    apply_sampler_step_arguments(
        args,
        sampler,
        params,
        guidance=args.guidance,
        guidance_interval_min=args.interval[0] if args.interval else None,
        guidance_interval_max=args.interval[1] if args.interval else None,
    )
    per_class = args.per_class or preset.per_class or 50
    num = args.num_samples or preset.num or per_class * num_classes
    expected = args.num_classes if args.num_classes is not None else preset.num_classes
    return sampler, params, num, per_class, expected


def _run_prompt_set(args, info) -> int:
    import torch

    from pixelgen.conditioners.pipeline import TextToImagePipeline
    from pixelgen.eval.prompt_sets import SAMPLING_PRESET, generate_dpg, generate_geneval
    from pixelgen.samplers import sampling_preset

    if args.geneval and args.dpg:
        raise ValueError("Give either --geneval or --dpg, not both.")
    if info.distributed:
        raise ValueError("Prompt sets run in one process; start them without torchrun.")
    pipe = TextToImagePipeline.from_pretrained(
        args.checkpoint,
        text_encoder=args.text_encoder,
        device=info.device,
        autocast_dtype=torch.bfloat16 if args.precision == "bf16" else None,
    )
    sampler, params, *_ = _settings(args, 0, base=sampling_preset(SAMPLING_PRESET))
    write = generate_geneval if args.geneval else generate_dpg
    out = write(
        pipe.model,
        pipe.conditioner,
        args.geneval or args.dpg,
        args.out,
        sampler=sampler,
        sampler_params=params,
        batch_size=args.batch_size,
        device=info.device,
        autocast_dtype=pipe.autocast_dtype,
        negative_prompt=args.negative_prompt,
        progress=not args.no_progress,
    )
    print(f"images written to {out}")
    return 0


def run(args) -> int:
    import torch

    from pixelgen.checkpoint import load_pretrained
    from pixelgen.distributed import cleanup_distributed, setup_distributed
    from pixelgen.eval.generation import generate_class_samples

    info = setup_distributed(args.device)
    if args.geneval or args.dpg:
        try:
            return _run_prompt_set(args, info)
        finally:
            cleanup_distributed(info)
    try:
        model = load_pretrained(args.checkpoint, device=info.device)
        classes = getattr(model, "num_classes", 0)
        sampler, params, num, per_class, expected = _settings(args, classes if isinstance(classes, int) else 0)
        if info.is_main:
            log.info("sampling %d images (%d per class) with %s %s", num, per_class, sampler, params)
        result = generate_class_samples(
            model,
            args.out,
            num=num,
            per_class=per_class,
            sampler=sampler,
            sampler_params=params,
            seed=args.seed,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            rank=args.rank if not info.distributed else None,
            world_size=args.world_size if not info.distributed else None,
            device=info.device,
            autocast_dtype=torch.bfloat16 if args.precision == "bf16" else None,
            expected_classes=expected,
            max_shards=args.max_shards,
            keep_shards=args.keep_shards,
            run_info={
                "checkpoint": str(args.checkpoint),
                "model_config": getattr(model, "config", None),
                "precision": args.precision,
            },
            progress=not args.no_progress and info.is_main,
        )
    finally:
        cleanup_distributed(info)
    if result.images_generated:
        print(
            f"rank {info.rank}: {result.images_generated} images in {result.seconds:.1f} s ({result.images_per_second:.2f} img/s)"
        )
    if info.is_main:
        print(
            f"samples: {result.samples}"
            if result.samples
            else f"not finished yet: rerun the same command to continue ({args.out})"
        )
    return 0
