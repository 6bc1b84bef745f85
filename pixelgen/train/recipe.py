"""Command-line front end shared by the training recipes (``recipes/imagenet256.py``, the T2I recipe).

One override scheme: every configuration field is set with ``--set key=value`` (repeatable; dotted keys,
JSON values), e.g. ``--set optim.lr=2e-4 --set data.batch_size=16 --set model.overrides.proj_drop=0``.
Only run-control options have their own flags: ``--preset``, ``--data`` (= ``data.root``), ``--out``
(= ``out_dir``), ``--resume [PATH]``, ``--demo``, ``--print-config``, ``--list-presets``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .config import TrainConfig, apply_overrides

__all__ = ["build_parser", "resolve_config", "run_recipe", "check_image_folder", "demo_encoder_overrides"]

log = logging.getLogger("pixelgen.recipe")

Preset = Callable[[], TrainConfig]


def build_parser(
    description: str, presets: Mapping[str, Preset], default: str, prog: str | None = None
) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument(
        "--preset", default=default, choices=sorted(presets), help=f"configuration preset (default: {default})"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set optim.lr=2e-4 (repeatable)",
    )
    p.add_argument("--data", help="training data folder (ImageNet train/ with one folder per class)")
    p.add_argument("--out", help="run folder for checkpoints, logs and samples (default: runs/<preset>)")
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="PATH",
        help="resume from PATH, or from <out>/checkpoints/latest.pt when no PATH is given",
    )
    p.add_argument("--demo", action="store_true", help="tiny model on the built-in demo dataset, CPU, a few minutes")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration as JSON and exit")
    p.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs and metrics.jsonl still written)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def resolve_config(args: argparse.Namespace, presets: Mapping[str, Preset], demo: Preset | None) -> TrainConfig:
    """Preset (or the demo) → ``--data``/``--out`` → ``--set`` overrides, in that order."""
    if args.demo:
        if demo is None:
            raise ValueError("This recipe has no --demo configuration.")
        config = demo()
    else:
        config = presets[args.preset]()
    if args.data is not None:
        config.data.root = args.data
    if args.out is not None:
        config.out_dir = args.out
    return apply_overrides(config, list(args.overrides))


def check_image_folder(root: str | None) -> None:
    """Fail early, in one sentence, when the ImageNet folder is missing or not class-per-folder."""
    if not root:
        raise FileNotFoundError(
            "No training data given: pass --data /path/to/imagenet/train (or --demo for the built-in dataset)."
        )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"The data folder {path} does not exist.")
    classes = [d for d in path.iterdir() if d.is_dir()]
    if not classes:
        raise FileNotFoundError(
            f"The data folder {path} has no class folders; expected ImageNet's train/ layout (one folder of images per class)."
        )


def demo_encoder_overrides(patch_size: int, *, dino: str = "dinov2_vitb14", lpips_net: str = "vgg") -> dict:
    """Frozen-encoder settings for ``--demo``: the real weights when they can be found (or downloaded); otherwise
    random weights (a tiny DINOv2) with a warning. Never used outside the demo."""
    from ..encoders.dinov2 import dinov2_weight_source
    from ..encoders.lpips_net import lpips_weight_source
    from ..utils.hub import WeightsNotFoundError, resolve_weights

    encoders: dict[str, dict] = {}
    try:
        resolve_weights(dinov2_weight_source(dino))
        encoders["dinov2"] = {"name": dino, "base_patch_size": patch_size}
        log.info("Demo: using the real %s weights (slower on CPU than the tiny random stand-in).", dino)
    except WeightsNotFoundError:
        log.warning(
            "Demo: no %s weights found (offline or not cached), so REPA and P-DINO use a tiny DINOv2 with RANDOM "
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
            "Demo: no ImageNet weights for the LPIPS %s trunk found, so LPIPS uses a RANDOM trunk (its linear "
            "heads from the lpips package are real). The LPIPS loss is not meaningful in this run.",
            lpips_net,
        )
        encoders["lpips"] = {"net": lpips_net, "weights": "random"}
    return encoders


def run_recipe(
    presets: Mapping[str, Preset],
    *,
    default: str,
    description: str,
    demo: Preset | None = None,
    argv: Sequence[str] | None = None,
    prepare: Callable[[TrainConfig, argparse.Namespace], TrainConfig] | None = None,
    prog: str | None = None,
) -> int:
    """Parse the command line, resolve the config, train. ``prepare`` may adjust the config (e.g. demo encoders)."""
    parser = build_parser(description, presets, default, prog)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.list_presets:
        for name, make in sorted(presets.items()):
            doc = (make.__doc__ or "").strip().splitlines()
            print(f"{name:24s} {doc[0] if doc else ''}")
        return 0
    try:
        config = resolve_config(args, presets, demo)
        if prepare is not None:
            config = prepare(config, args)
        if args.print_config:
            print(config.to_json())
            return 0
        from .trainer import train

        result = train(config, resume=args.resume, progress=not args.no_progress)
    except (ValueError, KeyError, FileNotFoundError, TypeError) as exc:
        if args.verbose:
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", 0)) != 0:
        return 0
    summary = {
        "step": result.step,
        "stopped": result.stopped,
        "out_dir": str(result.out_dir),
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "export": str(result.export_dir) if result.export_dir else None,
        "last_loss": result.last_loss,
    }
    print(json.dumps(summary, indent=2))
    return 0
