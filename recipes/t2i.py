#!/usr/bin/env python
"""Text-to-image training of PixelGen-XXL/16 in its three stages, plus a CPU demo.

    python recipes/t2i.py --preset pretrain256 --data /data/BLIP3o-shards --out runs/t2i/pretrain256
    python recipes/t2i.py --preset pretrain512 --init-from runs/t2i/pretrain256 --data /data/BLIP3o-shards --out runs/t2i/pretrain512
    python recipes/t2i.py --preset sft512 --init-from runs/t2i/pretrain512 --data /data/BLIP3o-60k --out runs/t2i/sft512
    python recipes/t2i.py --preset sft512 --out runs/t2i/sft512 --resume        # continue within a stage
    python recipes/t2i.py --demo                        # tiny, CPU, a few minutes, all three stages
    torchrun --nproc_per_node=8 recipes/t2i.py --preset pretrain256 --data ...   # each rank reads its own shards

The same as ``pixelgen train`` with ``--preset pretrain256`` as the default and ``--demo`` meaning the
``t2i_demo`` preset. Stages (the settings the released model was trained with):

| stage | data | res | batch × accum | lr | betas | steps | grid sampler |
|---|---|---|---|---|---|---|---|
| pretrain256 | webdataset shards | 256 | 64 × 3 | 2e-4 | (0.9, 0.95) | 200k | Euler 100, CFG 4 |
| pretrain512 | webdataset shards | 512 | 16 × 4 | 1e-4 | (0.9, 0.95) | +100k | Euler 100, CFG 4 |
| sft512 | caption folder | 512 | 16 × 4 | 1e-5 | (0.9, 0.999) | +60k | Adams-2 25, CFG 4, shift 3 |

All clip gradients at 1.0; AdamW with weight decay 0, constant lr, EMA 0.9999. A stage transition
(``--init-from``: a run folder or its checkpoint) loads the weights, the EMA weights and the REPA projector
into a **new run with a fresh optimiser** built from the stage's own lr and betas, at step 0, so each stage trains with
its own settings (see docs/parity.md). The 512 stages regenerate
the sin-cos position table for the 32×32 grid. ``--resume`` continues the latest checkpoint of the run in
``--out`` (within a stage). Any config field can be changed with ``--set key=value``, the text encoder and grid
prompts included (``--text-encoder``, ``--prompts-file``, or ``--set text.pad_mask=true``).

The run folder holds ``config.json`` (every setting, the text encoder's too), ``checkpoints/``,
``samples/step_*.png`` (prompts under each image), ``metrics.jsonl``, ``loss_curve.png`` and ``export/`` (EMA
weights + ``text_encoder.json``, ready for ``pixelgen generate --checkpoint``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pixelgen.cli.train import main as train_main


def main(argv: Sequence[str] | None = None) -> int:
    return train_main(
        argv,
        prog="t2i.py",
        default_preset="pretrain256",
        demo_preset="t2i_demo",
        tasks=("text",),
        description=__doc__.splitlines()[0],
    )


if __name__ == "__main__":
    sys.exit(main())
