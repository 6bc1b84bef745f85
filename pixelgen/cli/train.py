"""``pixelgen train``: train from a registered preset, your own image folder, or a replayed config.

    pixelgen train --demo                                     # tiny JiT on built-in images, CPU, minutes
    pixelgen train --data my_images/                          # class folders (or a flat folder): a small JiT
    pixelgen train --data my_images/ --resolution 64 --steps 20000 --batch-size 32
    pixelgen train --preset pixelgen_xl --data /data/imagenet/train
    torchrun --nproc_per_node=8 -m pixelgen.cli train --preset pixelgen_l --data /data/imagenet/train
    pixelgen train --preset pretrain256 --data '/data/shards/{00000..00999}.tar'
    pixelgen train --preset t2i_demo                          # the three text-to-image stages in miniature
    pixelgen train --config runs/x/config.json --out runs/x2  # replay a run (JSON or YAML), --set on top

Order of precedence: the preset (or ``--config``, or ``--demo``) → ``--data`` (layout, classes, resolution read
from the folder) → the flags (``--resolution``, ``--model``, ``--steps``, ``--batch-size``, ``--out``, text
options) → ``--set key=value`` (any config field; dotted keys, JSON values). Every value is type-checked.
Ctrl-C or SIGTERM stops after the current step with a checkpoint (exit code 130); a multi-stage preset then
starts no further stage. ``--resume`` continues the latest checkpoint in the run folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    ArgumentParser,
    add_common_arguments,
    add_set_argument,
    apply_threads,
    positive_float,
    positive_int,
    run_guarded,
    setup_logging,
)

HELP = "train a model: a registered preset, your own image folder (--data), a replayed config, or --demo"

log = logging.getLogger("pixelgen.train")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def add_parser(subparsers):
    p = subparsers.add_parser(
        "train", help=HELP, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_train_arguments(p)
    return p


def add_train_arguments(p: argparse.ArgumentParser, *, default_preset: str | None = None) -> None:
    what = p.add_argument_group("what to train")
    what.add_argument(
        "--preset",
        default=None,
        help="registered training preset (see --list-presets)"
        + (f"; default {default_preset}" if default_preset else ""),
    )
    what.add_argument("--config", metavar="FILE", help="a run's config.json (or a YAML/JSON config file) to replay")
    what.add_argument("--demo", action="store_true", help="the built-in demo (tiny model, built-in data, CPU)")
    what.add_argument(
        "--data", help="training data: class folders or a flat image folder (small presets), ImageNet train/, shards"
    )
    what.add_argument("--list-presets", action="store_true", help="list the training presets and exit")
    over = p.add_argument_group("overrides")
    over.add_argument("--resolution", type=positive_int, help="image size (default: read from --data, or the preset's)")
    over.add_argument("--model", help="backbone name (registered; see `pixelgen list backbone`)")
    over.add_argument("--steps", type=positive_int, help="optimiser steps (max_steps)")
    over.add_argument("--batch-size", type=positive_int, help="images per process and micro-batch (data.batch_size)")
    over.add_argument("--out", help="run folder for checkpoints, logs and samples (default: runs/<preset>)")
    add_set_argument(over, "override any config field, e.g. --set optim.lr=2e-4 (repeatable; applied last)")
    text = p.add_argument_group("text-to-image")
    text.add_argument("--init-from", help="stage transition: the previous stage's run folder or checkpoint")
    text.add_argument("--text-encoder", help="conditioner name, folder or Hugging Face id (default: the preset's)")
    text.add_argument("--pad-mask", action="store_true", help="mask text padding tokens in the backbone")
    text.add_argument("--prompts-file", help="sample-grid prompts, one per line")
    text.add_argument("--demo-scale", type=positive_float, help="multiply the t2i_demo's step counts")
    run = p.add_argument_group("run control")
    run.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="PATH",
        help="resume from PATH, or from <out>/checkpoints/latest.pt when no PATH is given",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in a run folder that already holds a run (removes its outputs)",
    )
    run.add_argument("--print-config", action="store_true", help="print the resolved configuration as JSON and exit")
    run.add_argument(
        "--no-progress", action="store_true", help="no progress bars (logs and metrics.jsonl still written)"
    )
    p.set_defaults(_default_preset=default_preset, _demo_preset="demo", _tasks=None)


# -- resolving the configuration -----------------------------------------------------------------------------
def _preset_entry(name: str):
    from pixelgen.registry import registries

    return registries.train_preset.get(name)


def _data_layout(root: str, *, classes_required: bool = False, read_size: bool = True) -> dict[str, Any]:
    """``{"kind": "classes"|"flat", "class_names": [...], "min_side": px}`` of an image folder (one sentence if
    it is not one)."""
    path = Path(root).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"The data folder {path} does not exist.")
    if not path.is_dir():
        raise NotADirectoryError(f"--data {path} is not a folder of images.")
    classes = sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    if classes:
        kind, names = "classes", classes
    elif classes_required:
        raise FileNotFoundError(
            f"The data folder {path} has no class folders; this preset expects ImageNet's train/ layout (one folder "
            "of images per class). For a flat folder of images use `pixelgen train --data DIR` (a small preset)."
        )
    else:
        kind, names = "flat", [path.name]
    layout: dict[str, Any] = {"kind": kind, "class_names": names, "min_side": None}
    if not read_size and kind == "classes":
        return layout
    folders = [path / c for c in classes] if classes else [path]
    first = None
    for folder in folders:
        walk = sorted(folder.rglob("*")) if classes else sorted(folder.iterdir())
        first = next((f for f in walk if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES), None)
        if first is not None:
            break
    if first is None:
        raise FileNotFoundError(
            f"The data folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})"
            + (" in its class folders." if classes else " and no class folders of images.")
        )
    if read_size:
        from PIL import Image

        try:
            with Image.open(first) as image:
                layout["min_side"] = min(image.size)
        except Exception as exc:
            raise ValueError(f"Cannot read the image {first}: {exc}.") from None
    return layout


def _set_override(overrides: Sequence[str], key: str) -> bool:
    return any(item.split("=", 1)[0].strip() == key for item in overrides)


def _adapt_to_data(config, layout: dict[str, Any], root: str, *, adapts: bool, overrides: Sequence[str]) -> None:
    """Point a class-conditional config at an image folder: dataset, class names and (small presets) the class
    count of the model and the grid labels."""
    names = layout["class_names"]
    dataset = "imagenet" if layout["kind"] == "classes" else "image_folder_flat"
    if config.data.dataset != dataset:
        config.data.options = {}  # options belong to the dataset they were written for (e.g. the demo set's)
    config.data.dataset = dataset
    config.data.root = str(root)
    config.data.class_names = list(names)
    if adapts and not _set_override(overrides, "model.overrides.num_classes"):
        config.model.overrides["num_classes"] = len(names)


def _set_resolution(config, resolution: int) -> None:
    config.data.resolution = resolution
    config.model.overrides["input_size"] = resolution


def _read_prompts(path: str) -> list[str]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"The prompts file {file} does not exist.")
    prompts = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"The prompts file {file} holds no prompt (one per line).")
    return prompts


def resolve_configs(args: argparse.Namespace) -> list:
    """The run's stage configs (one for most presets) after every option, validated."""
    from pixelgen.train.config import apply_overrides, load_config_file
    from pixelgen.train.presets import build_train_preset

    chosen = [flag for flag, on in (("--preset", args.preset), ("--config", args.config), ("--demo", args.demo)) if on]
    if len(chosen) > 1:
        raise ValueError(f"Give one of --preset, --config and --demo, not {' and '.join(chosen)}.")
    layout, entry = None, None
    if args.config:
        base: Any = load_config_file(args.config)
    else:
        name = args.preset or (args._demo_preset if args.demo else None) or args._default_preset
        if name is None and args.data:  # your own images: a small preset sized by the data
            layout = _data_layout(args.data)
            res = args.resolution or layout["min_side"]
            name = "small_64" if res >= 64 else "small_32"
            log.info("Training the %s preset on %s (%d classes).", name, args.data, len(layout["class_names"]))
        if name is None:
            raise ValueError(
                "Nothing to train: pass --data DIR (your images), --preset NAME (see --list-presets), "
                "--config FILE or --demo."
            )
        entry = _preset_entry(name)
        kwargs: dict[str, Any] = {}
        if entry.metadata.get("stages"):
            if args.out:
                kwargs["out_root"] = args.out
            if args.demo_scale is not None:
                kwargs["steps_scale"] = args.demo_scale
        elif args.demo_scale is not None:
            raise ValueError(f"--demo-scale applies to multi-stage demo presets (t2i_demo), not to {name}.")
        base = build_train_preset(name, **kwargs)
    configs = list(base) if isinstance(base, list) else [base]
    multi = len(configs) > 1
    text_task = (entry.metadata.get("task") == "text") if entry is not None else configs[0].text is not None
    adapts = bool(entry.metadata.get("adapts_to_data")) if entry is not None else False
    out = []
    for config in configs:
        if args.data is not None:
            if multi:
                raise ValueError("--data does not apply to a multi-stage demo preset (it brings its own data).")
            if text_task:
                config.data.root = args.data
            elif layout is None and not adapts and args.print_config:
                config.data.root = args.data  # printing only: the folder is checked when training starts
            else:
                found = layout or _data_layout(args.data, classes_required=not adapts, read_size=False)
                _adapt_to_data(config, found, args.data, adapts=adapts, overrides=args.overrides)
                if layout is not None and args.resolution is None:
                    _set_resolution(config, 64 if layout["min_side"] >= 64 else 32)
        if args.resolution is not None:
            _set_resolution(config, args.resolution)
        if args.model is not None:
            keep = {k: v for k, v in config.model.overrides.items() if k in ("input_size", "num_classes")}
            config.model.name, config.model.overrides = args.model, keep
        if args.steps is not None:
            config.max_steps = args.steps
        if args.batch_size is not None:
            config.data.batch_size = args.batch_size
        if args.out is not None and not multi:
            config.out_dir = args.out
        if args.init_from is not None:
            if multi:
                raise ValueError("--init-from does not apply to a multi-stage preset (its stages chain themselves).")
            config.init_from = args.init_from
        if args.text_encoder is not None or args.pad_mask or args.prompts_file:
            if config.text is None:
                raise ValueError(
                    "--text-encoder, --pad-mask and --prompts-file apply to text-to-image presets only; "
                    f"{config.name} is class-conditional."
                )
            if args.text_encoder is not None:
                config.text.encoder = args.text_encoder
            if args.pad_mask:
                config.text.pad_mask = True
            if args.prompts_file:
                config.text.prompts = _read_prompts(args.prompts_file)
                config.sample.num_images = len(config.text.prompts)
        if args.threads is not None:
            config.num_threads = args.threads
        config = apply_overrides(config, list(args.overrides))
        names = config.data.class_names
        if args.data is not None and adapts and names and not _set_override(args.overrides, "sample.labels"):
            # the grid shows the classes in turn (after --set, so a changed sample.num_images counts)
            config.sample.labels = [i % len(names) for i in range(config.sample.num_images)]
        if config.text is None and config.model.name.endswith("t2i"):
            raise ValueError(f"The model {config.model.name} is text-to-image but the config has no text section.")
        out.append(config)
    return out


# -- checks before the (large) parts load -------------------------------------------------------------------
def check_data(config, *, needs_init: str | None, resume: str | None) -> None:
    from pixelgen.train import CheckpointManager

    if (
        needs_init
        and not config.init_from
        and (resume is None or CheckpointManager(config.out_dir).find_resume() is None)
    ):
        raise ValueError(f"Stage {config.name} starts from a {needs_init} run: pass --init-from <that run's folder>.")
    dataset, root = config.data.dataset, config.data.root
    if dataset in ("imagenet", "image_folder_flat"):
        if not root:
            raise FileNotFoundError(
                "No training data given: pass --data /path/to/images (class folders or a flat folder), or --demo."
            )
        _data_layout(root, classes_required=dataset == "imagenet", read_size=False)
    elif dataset in ("webdataset_captions", "caption_folder"):
        if not root:
            raise FileNotFoundError(
                "No training data given: pass --data (webdataset shards for pretraining, a caption folder for sft512)."
            )
        if dataset == "caption_folder":
            if not Path(root).expanduser().is_dir():
                raise FileNotFoundError(f"The caption folder {root} does not exist.")
        else:
            from pixelgen.data.shards import expand_shards

            expand_shards(root)  # one sentence when nothing matches


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM outside the training loop (while parts load, between stages) acts as Ctrl-C; inside it, the
    trainer's own handler stops after the current step with a checkpoint."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _summary(result) -> dict[str, Any]:
    return {
        "step": result.step,
        "stopped": result.stopped,
        "out_dir": str(result.out_dir),
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "export": str(result.export_dir) if result.export_dir else None,
        "last_loss": result.last_loss,
    }


def _demo_figures(config, result) -> dict[str, Any]:
    """A class run on the built-in demo set ends with its recognition figure (printed; recognition.json)."""
    if config.data.dataset != "demo" or config.text is not None or result.export_dir is None:
        return {}
    if config.model.overrides.get("num_classes") != 10 or int(os.environ.get("RANK", 0)) != 0:
        return {}
    from pixelgen.eval.recognition import recognise_demo_run

    figures = recognise_demo_run(config, result.export_dir, result.out_dir)
    print(
        f"Recognised {figures['recognised']:.0%} of {figures['samples']} class-conditional samples as their class "
        f"(a classifier trained on real crops; it recognises {figures['classifier_real']:.0%} of held-out ones). "
        f"Patch seams {figures.get('patch_seams', float('nan')):.2f} (1 = no visible patch grid). {figures['path']}",
        file=sys.stderr,
    )
    return {"recognised": figures["recognised"], "patch_seams": figures.get("patch_seams")}


def run(args: argparse.Namespace) -> int:
    from pixelgen.registry import registries

    if args.list_presets:
        tasks = args._tasks
        for entry in registries.train_preset.entries():
            if tasks is None or entry.metadata.get("task") in tasks:
                print(f"{entry.name:24s} {entry.doc}")
        return EXIT_OK
    configs = resolve_configs(args)
    if args.print_config:
        dicts = [c.to_dict() for c in configs]
        print(json.dumps(dicts[0] if len(dicts) == 1 else dicts, indent=2, sort_keys=True))
        return EXIT_OK
    from pixelgen.train import train

    names = [c.name for c in configs]
    stages: dict[str, Any] = {}
    with _sigterm_interrupts():
        for config in configs:
            stage = config.name.removeprefix("t2i_")
            needs = (
                registries.train_preset.get(stage).metadata.get("needs_init")
                if stage in registries.train_preset
                else None
            )
            if len(configs) > 1 and stage == "sft512":
                from pixelgen.train.presets import write_demo_caption_folder

                if not Path(config.data.root).is_dir():
                    write_demo_caption_folder(config.data.root, config.data.resolution)
            check_data(config, needs_init=needs, resume=args.resume)
            # resume="auto" with nothing to continue yet starts the stage (from init_from when given)
            result = train(config, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
            stages[config.name] = _summary(result)
            if result.stopped != "interrupted":
                stages[config.name].update(_demo_figures(config, result))
            if result.stopped == "interrupted":
                break
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(stages[names[0]] if len(configs) == 1 else {"stages": stages}, indent=2))
    if result.stopped == "interrupted":
        log.warning(
            "Stopped at step %d of %s with a checkpoint (%s); continue with --resume.",
            result.step,
            config.name,
            result.checkpoint,
        )
        return EXIT_INTERRUPTED
    return EXIT_OK


def main(
    argv: Sequence[str] | None = None,
    *,
    prog: str,
    default_preset: str | None = None,
    demo_preset: str = "demo",
    tasks: Sequence[str] | None = None,
    description: str | None = None,
) -> int:
    """The training command as a stand-alone script (``recipes/*.py``): same options, same error policy."""
    parser = ArgumentParser(
        prog=prog, description=description or HELP, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    add_train_arguments(parser, default_preset=default_preset)
    add_common_arguments(parser)
    parser.set_defaults(_demo_preset=demo_preset, _tasks=tuple(tasks) if tasks else None)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def work() -> int:
        apply_threads(args.threads)
        return run(args)

    return run_guarded(prog, work, verbose=args.verbose)
