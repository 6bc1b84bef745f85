#!/usr/bin/env python
"""Train PixelGen on ImageNet 256×256 with the paper's settings, or a tiny demo on CPU.

    python recipes/imagenet256.py --demo                                    # built-in data, CPU, ~3 minutes
    python recipes/imagenet256.py --data /data/imagenet/train               # PixelGen-XL/16, 800k steps
    torchrun --nproc_per_node=8 recipes/imagenet256.py --data ... --preset pixelgen_l
    python recipes/imagenet256.py --data ... --set optim.lr=2e-4 --set data.batch_size=16 --resume

The same as ``pixelgen train`` with ``--preset pixelgen_xl`` as the default: presets ``pixelgen_xl``,
``pixelgen_l``, ``jit_l_baseline`` and the ablation ladder on L/16 for 200k steps (``jit_repa`` → ``+lpips`` →
``+lpips+pdino`` → ``pixelgen_l``), registered in ``pixelgen.train.presets``. Every field can be changed with
``--set key=value``; the resolved configuration is written to ``<out>/config.json`` next to the checkpoints.
"""

from __future__ import annotations

import sys

from pixelgen.cli.train import main as train_main


def main(argv: list[str] | None = None) -> int:
    return train_main(
        argv,
        prog="imagenet256.py",
        default_preset="pixelgen_xl",
        demo_preset="demo",
        tasks=("class",),
        description=__doc__.splitlines()[0],
    )


if __name__ == "__main__":
    sys.exit(main())
