"""Distributed training on CPU: 2 gloo processes launched through torchrun equal 1 process with the doubled batch.

Why the two runs can agree: the epoch sampler cuts the same global batches whatever the world size (rank r
takes the r-th contiguous part), DDP averages the per-rank mean losses' gradients (= the gradient of the mean
over the global batch when the parts are equal), and ``per_sample_noise`` gives every sample a seed derived
from its global sample index, from which the objective draws that sample's t, noise and label drop. The
objective is the ungated ``+lpips+pdino`` rung: noise gating normalises LPIPS by the number of gated-in samples
*per process* (as the original did under DDP), which is not a mean over the global batch.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pixelgen.train import load_training_checkpoint

HERE = Path(__file__).parent
STEPS, BATCH = 3, 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out: Path, nproc: int, batch: int, strategy: str = "ddp", preset: str = "jit_repa_lpips_pdino") -> None:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(HERE / "train_helpers.py"),
        str(out),
        str(STEPS),
        str(batch),
        strategy,
        preset,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    _launch(out, nproc=1, batch=2 * BATCH)
    return out


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gloo_processes_equal_one_process_with_the_doubled_batch(single, tmp_path, strategy):
    """DDP, and FSDP2 (``fully_shard`` per block, full state gathered for the checkpoint), on gloo."""
    _launch(tmp_path, nproc=2, batch=BATCH, strategy=strategy)
    one, two = load_training_checkpoint(single), load_training_checkpoint(tmp_path)
    assert one["step"] == two["step"] == STEPS and two["world_size"] == 2
    assert one["samples_seen"] == two["samples_seen"] == STEPS * 2 * BATCH
    # Same data and the same per-sample draws: the first step's loss (averaged over ranks) agrees to float precision.
    loss = lambda d: [r["loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert loss(single)[0] == pytest.approx(loss(tmp_path)[0], rel=1e-6)
    # The weights after K AdamW steps agree up to float noise. The summation order differs (all-reduce of two
    # half-batch gradients vs one batch), and Adam's division by sqrt(v) magnifies that noise for entries whose
    # gradient is near zero (the zero-initialised adaLN-Zero layers), so: typical entries agree to 1e-4 of the
    # learning rate, and every entry to 5% of it (different random draws would differ by ~lr everywhere).
    lr = 1e-3
    for part in ("model", "ema", "objective"):
        diffs = torch.cat(
            [
                (two[part][k] - v).abs().flatten()
                for k, v in one[part].items()
                if isinstance(v, torch.Tensor) and v.is_floating_point()
            ]
        )
        assert diffs.median() < 1e-4 * lr and diffs.max() < 0.05 * lr, (part, diffs.median(), diffs.max())
    # The weights did move (EMA lags behind them), so this is not a comparison of two untouched initialisations.
    assert any(
        not torch.equal(one["model"][k], one["ema"][k]) for k in one["model"] if one["model"][k].is_floating_point()
    )
    # Ranks are seeded apart: each saved its own RNG stream.
    assert len(two["rng"]) == 2 and not torch.equal(two["rng"][0]["torch"], two["rng"][1]["torch"])

    # Each rank saw a disjoint part of every global batch, and together exactly the single run's samples.
    ranks = [json.loads((tmp_path / f"indices_rank{r}.json").read_text()) for r in (0, 1)]
    whole = json.loads((single / "indices_rank0.json").read_text())
    assert len(ranks[0]) == len(ranks[1]) == len(whole) == STEPS
    for step in range(STEPS):
        a, b = set(ranks[0][step]), set(ranks[1][step])
        assert not a & b and len(a) == len(b) == BATCH
        assert ranks[0][step] + ranks[1][step] == whole[step]
    # 3 steps x 8 samples = one epoch of 24: each sample exactly once across ranks.
    flat = sorted(i for r in ranks for batch in r for i in batch)
    assert flat == list(range(24))
