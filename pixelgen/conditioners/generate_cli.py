"""``pixelgen generate``: prompts → PNGs (and optional denoising GIFs) from a text-to-image checkpoint.

Example::

    pixelgen generate --checkpoint runs/t2i/export --prompt "a photo of a cat" --num 4 --seed 0 --out samples/

Writes ``<out>/<prompt#>_<sample#>_<slug>.png`` (and ``.gif`` with ``--trajectory``) plus ``metadata.jsonl``
(one line per image: file, prompt, negative prompt, seed, index, sampler settings).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

HELP = "generate images from text prompts with a text-to-image checkpoint (Adams-2, 25 steps, CFG 4, shift 3)"


def add_arguments(p) -> None:
    p.add_argument("--checkpoint", required=True, help="exported checkpoint folder (model.safetensors + config.json)")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for several)")
    p.add_argument("--prompt-file", help="a text file with one prompt per line (added to --prompt)")
    p.add_argument("--negative-prompt", default=None, help='encoded as the unconditional embedding instead of ""')
    p.add_argument("--num", type=int, default=4, help="images per prompt (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="generated", help="output folder (default ./generated)")
    p.add_argument("--sampler", default="adams", help="sampler name (default adams)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--shift", type=float, default=3.0, help="time shift of the sampling grid")
    p.add_argument("--order", type=int, default=2, help="Adams order (1-4)")
    p.add_argument("--height", type=int, default=None, help="default: the training resolution")
    p.add_argument("--width", type=int, default=None, help="default: the training resolution")
    p.add_argument("--text-encoder", default=None, help="registered name, folder or HF id (default: the checkpoint's)")
    mask = p.add_mutually_exclusive_group()
    mask.add_argument("--pad-mask", dest="pad_mask", action="store_true", default=None, help="mask text padding tokens")
    mask.add_argument("--no-pad-mask", dest="pad_mask", action="store_false", help="feed padding unmasked (original)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--trajectory", action="store_true", help="also save each image's denoising steps as a GIF")


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


def run(args) -> int:
    from PIL import Image

    from .pipeline import TextToImagePipeline, save_trajectory_gif

    prompts = read_prompts(args)
    if args.num < 1:
        raise ValueError(f"--num must be at least 1, got {args.num}.")
    pipe = TextToImagePipeline.from_pretrained(
        args.checkpoint, text_encoder=args.text_encoder, pad_mask=args.pad_mask, device=args.device
    )
    settings = {"sampler": args.sampler, "num_steps": args.steps, "guidance": args.guidance, "timeshift": args.shift}
    if args.sampler == "adams":
        settings["order"] = args.order
    result = pipe(
        prompts,
        negative_prompt=args.negative_prompt,
        num_images_per_prompt=args.num,
        seed=args.seed,
        height=args.height,
        width=args.width,
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
