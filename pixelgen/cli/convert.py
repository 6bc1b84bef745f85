"""``pixelgen convert CKPT OUT_DIR``: a released PixelGen Lightning checkpoint → model.safetensors + config.json."""

from __future__ import annotations

import json

from .common import add_set_argument, parse_assignments

HELP = "convert an original PixelGen Lightning .ckpt into model.safetensors + config.json (EMA weights by default)"


def add_parser(subparsers):
    p = subparsers.add_parser("convert", help=HELP, description=HELP)
    p.add_argument(
        "checkpoint", help="original .ckpt (state_dict with denoiser.*, ema_denoiser.*, diffusion_trainer.proj.*)"
    )
    p.add_argument("out_dir", help="folder to write model.safetensors, config.json (and repa_projector.safetensors)")
    p.add_argument(
        "--weights", choices=("ema", "raw"), default="ema", help="EMA weights (default) or the raw training weights"
    )
    p.add_argument("--preset", help="backbone preset for what shapes cannot tell (default: the matching preset)")
    add_set_argument(
        p, "config override with the released configs' argument names, e.g. --set in_context_start=8 (repeatable)"
    )
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow full unpickling when torch.load(weights_only=True) refuses the file (only for trusted files)",
    )
    return p


def run(args) -> int:
    from pixelgen.checkpoint import convert_checkpoint

    out = convert_checkpoint(
        args.checkpoint,
        args.out_dir,
        weights=args.weights,
        preset=args.preset,
        trust_pickle=args.trust_pickle,
        **parse_assignments(args.overrides),
    )
    config = json.loads((out / "config.json").read_text())
    print(f"wrote {out}: arch={config['arch']} weights={args.weights}")
    print(json.dumps(config["config"], indent=2, sort_keys=True))
    return 0
