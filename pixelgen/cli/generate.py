"""``pixelgen generate``: prompts → PNGs (and optional denoising GIFs) from a text-to-image checkpoint, or class
labels → PNGs from a class-to-image checkpoint.

Example::

    pixelgen generate --checkpoint runs/t2i/export --prompt "a photo of a cat" --num 4 --seed 0 --out samples/
    pixelgen generate --checkpoint runs/demo/export --class 3 --num 4 --sampler heun --steps 50 --out samples/

Class models: image k of class c (the n-th image written, n = class position · num + k) starts from the noise of
sample n of :func:`pixelgen.generate` with this seed, so one class alone gives the images ``pixelgen app`` shows.

Writes ``<out>/<prompt#>_<sample#>_<slug>.png`` (and ``.gif`` with ``--trajectory``) plus ``metadata.jsonl``
(one line per image: file, prompt, negative prompt, seed, index, sampler settings).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .common import finite_float, non_negative_int, positive_float, positive_int

HELP = (
    "generate images from text prompts (text-to-image checkpoint: Adams-2, 25 steps, CFG 4, shift 3) or class labels"
    " (class-to-image checkpoint: Heun, 50 steps)"
)


def _default_preset(kind: str):
    """Text models: the registered ``t2i_default`` sampling preset (the released model's); class models: those of
    `pixelgen sample` (Heun, 50 steps, no guidance, shift 1)."""
    from pixelgen.samplers import SamplingPreset, sampling_preset

    if kind == "text":
        return sampling_preset("t2i_default")
    return SamplingPreset("heun", {"num_steps": 50, "guidance": 1.0, "timeshift": 1.0})


def add_parser(subparsers):
    p = subparsers.add_parser("generate", help=HELP, description=HELP)
    p.add_argument("--checkpoint", required=True, help="exported checkpoint folder (model.safetensors + config.json)")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for several)")
    p.add_argument(
        "--class",
        dest="classes",
        type=non_negative_int,
        action="append",
        default=[],
        help="class models: a label (repeatable)",
    )
    p.add_argument("--prompt-file", help="a text file with one prompt per line (added to --prompt)")
    p.add_argument("--negative-prompt", default=None, help='encoded as the unconditional embedding instead of ""')
    p.add_argument("--num", type=positive_int, default=4, help="images per prompt (default 4)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--out", default="generated", help="output folder (default ./generated)")
    p.add_argument("--sampler", default=None, help="sampler name (default adams for text, heun for class models)")
    p.add_argument("--steps", type=positive_int, default=None, help="default 25 (text) or 50 (class)")
    p.add_argument("--guidance", type=finite_float, default=None, help="CFG scale (default 4 for text, 1 for class)")
    p.add_argument(
        "--interval",
        type=finite_float,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="guidance interval (default: the sampler's)",
    )
    p.add_argument(
        "--shift", type=positive_float, default=None, help="time shift of the grid (default 3 text, 1 class)"
    )
    p.add_argument("--order", type=positive_int, default=None, help="Adams order 1-4 (default 2)")
    p.add_argument("--height", type=positive_int, default=None, help="default: the training resolution")
    p.add_argument("--width", type=positive_int, default=None, help="default: the training resolution")
    p.add_argument(
        "--resolution", type=positive_int, default=None, help="square images of this size (= --height and --width)"
    )
    p.add_argument("--text-encoder", default=None, help="registered name, folder or HF id (default: the checkpoint's)")
    mask = p.add_mutually_exclusive_group()
    mask.add_argument("--pad-mask", dest="pad_mask", action="store_true", default=None, help="mask text padding tokens")
    mask.add_argument("--no-pad-mask", dest="pad_mask", action="store_false", help="feed padding unmasked (original)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="network precision (default auto: bf16 autocast on CUDA, fp32 elsewhere)",
    )
    p.add_argument("--trajectory", action="store_true", help="also save each image's denoising steps as a GIF")
    return p


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "empty"


def read_prompts(args) -> list[str]:
    prompts = list(args.prompt)
    if args.prompt_file:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise FileNotFoundError(f"The prompt file {path} does not exist.")
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError('No prompt given: pass --prompt "..." (repeatable) or --prompt-file.')
    return prompts


def _checkpoint_kind(checkpoint: str) -> str:
    """``"class"`` or ``"text"``, read from the folder's config.json (``"text"`` when it cannot be read: the
    text pipeline then says what is wrong with the folder)."""
    from pixelgen.backbones import build_model

    if not Path(checkpoint).exists():
        raise FileNotFoundError(f"The checkpoint {checkpoint} does not exist.")
    config = Path(checkpoint) / "config.json"
    try:
        meta = json.loads(config.read_text())
        return getattr(build_model(meta["arch"], device="meta", **meta["config"]), "cond_kind", "class")
    except (OSError, ValueError, KeyError, TypeError):
        return "text"


def _sampler_settings(args, kind: str) -> dict:
    """The sampler and its parameters: explicit options over the default preset (those the sampler takes)."""
    from pixelgen.samplers import sampler_parameters

    preset = _default_preset(kind)
    name = args.sampler or preset.sampler
    accepted = sampler_parameters(name)
    settings = {k: v for k, v in preset.params.items() if k in accepted}
    explicit = {"num_steps": args.steps, "guidance": args.guidance, "timeshift": args.shift, "order": args.order}
    settings.update({k: v for k, v in explicit.items() if v is not None and k in accepted})
    if args.interval:
        settings["guidance_interval_min"], settings["guidance_interval_max"] = args.interval
    return {"sampler": name, **settings}


def _size(args) -> tuple[int | None, int | None]:
    if args.resolution is not None:
        if args.height is not None or args.width is not None:
            raise ValueError("Give either --resolution or --height/--width, not both.")
        return args.resolution, args.resolution
    return args.height, args.width


def _autocast(args, device):
    import torch

    if args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def _run_classes(args) -> int:
    import torch
    from PIL import Image

    from pixelgen.checkpoint import load_pretrained
    from pixelgen.samplers import build_sampler, generate

    if args.prompt or args.prompt_file or args.negative_prompt is not None:
        raise ValueError("This checkpoint is a class-to-image model: give --class LABEL, not prompts.")
    if args.trajectory:
        raise ValueError("--trajectory is available for text-to-image checkpoints only.")
    if not args.classes:
        raise ValueError("No class given: pass --class LABEL (repeatable) for this class-to-image checkpoint.")
    height, width = _size(args)
    if height != width:
        raise ValueError(f"Class-to-image models make square images; got --height {height} and --width {width}.")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    overrides = {"input_size": height} if height is not None else {}
    model = load_pretrained(args.checkpoint, device=device, **overrides)
    meta = json.loads((Path(args.checkpoint) / "config.json").read_text())
    names = meta.get("class_names") if isinstance(meta.get("class_names"), list) else None
    settings = _sampler_settings(args, "class")
    params = {k: v for k, v in settings.items() if k != "sampler"}
    labels = torch.tensor([c for c in args.classes for _ in range(args.num)])
    images = generate(
        model,
        labels,
        sampler=build_sampler(settings["sampler"], **params),
        seed=args.seed,
        batch_size=args.batch_size,
        device=device,
        autocast_dtype=_autocast(args, device),
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for n, (image, label) in enumerate(zip(images, labels.tolist())):
        name = names[label] if names and label < len(names) else f"class-{label}"
        stem = f"{n // args.num:03d}_{n % args.num:02d}_{_slug(name)}"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(out / f"{stem}.png")
        lines.append(json.dumps({"file": f"{stem}.png", "class": label, "seed": args.seed, "index": n, **settings}))
    (out / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} image(s) for {len(args.classes)} class(es) to {out}")
    return 0


def run(args) -> int:
    from PIL import Image

    from pixelgen.conditioners.pipeline import TextToImagePipeline, save_trajectory_gif

    if args.num < 1:
        raise ValueError(f"--num must be at least 1, got {args.num}.")
    if _checkpoint_kind(args.checkpoint) == "class":
        return _run_classes(args)
    if args.classes:
        raise ValueError("--class is for class-to-image checkpoints; this one takes prompts (--prompt).")
    prompts = read_prompts(args)
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe = TextToImagePipeline.from_pretrained(
        args.checkpoint,
        text_encoder=args.text_encoder,
        pad_mask=args.pad_mask,
        device=device,
        autocast_dtype=_autocast(args, device),
    )
    settings = _sampler_settings(args, "text")
    height, width = _size(args)
    result = pipe(
        prompts,
        negative_prompt=args.negative_prompt,
        num_images_per_prompt=args.num,
        seed=args.seed,
        height=height,
        width=width,
        batch_size=args.batch_size,
        return_trajectory=args.trajectory,
        progress=True,
        **settings,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for n, (image, prompt) in enumerate(zip(result.images, result.prompts)):
        stem = f"{n // args.num:03d}_{n % args.num:02d}_{_slug(prompt)}"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(out / f"{stem}.png")
        record = {
            "file": f"{stem}.png",
            "prompt": prompt,
            "negative_prompt": args.negative_prompt,
            "seed": args.seed,
            "index": n,
            **settings,
        }
        if result.trajectories is not None:
            save_trajectory_gif(result.trajectories[n], out / f"{stem}.gif")
            record["trajectory"] = f"{stem}.gif"
        lines.append(json.dumps(record))
    (out / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} image(s) for {len(prompts)} prompt(s) to {out}")
    return 0
