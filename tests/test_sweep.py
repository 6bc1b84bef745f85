"""The EMA × guidance sweep: end to end on a tiny trained run, resume after a kill, tables, plot, records."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from posthoc_helpers import TinyFeatures, posthoc_config, reference_images, train_run

from pixelgen.cli import main
from pixelgen.eval.sweep import plot_sweep, run_sweep

HERE = Path(__file__).parent
GRID = ["--ema", "0.05,0.1", "--guidance", "1,2,3", "--interval", "0.1,0.9"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny run with post-hoc EMA on (16 steps, snapshots every 4) and its training images as a reference."""
    root = tmp_path_factory.mktemp("sweep_run")
    train_run(posthoc_config(root / "run", "max_steps=16", "posthoc_ema.every=4"))
    np.savez(root / "ref.npz", arr_0=reference_images())
    return root / "run", root / "ref.npz"


def _sweep_args(run: Path, ref: Path, out: Path) -> list[str]:
    return [
        "sweep",
        str(run),
        *GRID,
        "--num",
        "4",
        "--sampler",
        "euler",
        "--steps",
        "2",
        "--ref",
        str(ref),
        "--out",
        str(out),
        "--inception-weights",
        "random",
        "--cache-dir",
        str(out.parent / "cache"),
        "--device",
        "cpu",
        "--batch-size",
        "4",
        "--no-progress",
    ]


@pytest.mark.slow
def test_sweep_runs_end_to_end_and_resumes_after_being_killed(trained, tmp_path, capsys):
    run, ref = trained
    out = tmp_path / "sweep"
    args = _sweep_args(run, ref, out)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "pixelgen.cli", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 900  # generous: on a loaded machine the first setting also computes the reference
    while not list(out.glob("settings/*/result.json")):  # kill -9 once a setting is finished
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "the sweep did not finish a setting in time"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("settings/*/result.json")}
    assert 1 <= len(finished) < 6

    capsys.readouterr()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"({len(finished)} read back, {6 - len(finished)} computed)" in printed
    for key, mtime in finished.items():  # a finished setting is not recomputed
        assert (out / "settings" / key / "result.json").stat().st_mtime_ns == mtime

    table = json.loads((out / "sweep.json").read_text())
    rows = table["rows"]
    assert len(rows) == 6 and {(r["ema"], r["guidance"]) for r in rows} == {
        (e, g) for e in ("0.05", "0.1") for g in (1.0, 2.0, 3.0)
    }
    assert all(np.isfinite(r["value"]) for r in rows)
    best = min(rows, key=lambda r: r["value"])
    assert table["best"]["key"] == best["key"] and f"best: EMA {best['ema']}, guidance {best['guidance']:g}" in printed
    # every result records the seeds, the sampler settings, the precision, the features and the versions
    for r in rows:
        assert r["seed"] == 0 and r["sampler"] == "euler" and r["sampler_params"]["num_steps"] == 2
        assert r["sampler_params"]["guidance"] == r["guidance"] and r["precision"] == "fp32"
        assert r["evaluation"]["inception"] == "inception-random-0"
        assert {"torch", "pixelgen", "python"} <= set(r["versions"])
        assert r["reconstruction"]["step"] == 16 and r["reconstruction"]["sigma_rel"] == float(r["ema"])
    # paired: every setting drew the same labels from the same seed; the sample files were removed after scoring
    manifests = [json.loads(p.read_text()) for p in out.glob("settings/*/samples/run.json")]
    assert len(manifests) == 6 and {(m["seed"], m["per_class"], m["num"]) for m in manifests} == {(0, 1, 4)}
    assert not list(out.glob("settings/*/samples/samples.npz"))
    with open(out / "sweep.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == 6 and {float(r["fid"]) for r in csv_rows} == {r["value"] for r in rows}
    png = (out / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # the command for the final set names the best model folder and a fresh seed
    assert "pixelgen sample --checkpoint" in printed and f"models/ema_{best['ema']}" in printed
    assert "--num-samples 50000" in printed and "--seed 1" in printed and "--guidance" in printed
    assert table["final_commands"][1].startswith("pixelgen eval")


def test_a_raising_sweep_resumes_without_recomputing_and_shared_settings_are_pinned(trained, tmp_path):
    run, ref = trained
    common = dict(
        reference=ref,
        guidance=[1.0, 2.0],
        intervals=[(0.0, 1.0), (0.1, 0.9)],
        ema=[0.07],
        num=8,
        sampler="euler",
        sampler_params={"num_steps": 2},
        inception=TinyFeatures(),
        cache_dir=tmp_path / "cache",
        progress=False,
        batch_size=8,
    )
    seen = []

    def stop_after_two(row):
        seen.append(row["key"])
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(run, tmp_path / "s", on_setting_done=stop_after_two, **common)
    result = run_sweep(run, tmp_path / "s", **common)
    assert (result.reused, result.computed) == (2, 2) and len(result.rows) == 4
    # the plot draws one line per EMA width and interval
    assert result.plot is not None and result.plot.is_file()
    with pytest.raises(ValueError, match="other shared settings"):
        run_sweep(run, tmp_path / "s", **{**common, "num": 12})
    with pytest.raises(ValueError, match="give the EMA widths"):
        run_sweep(run, tmp_path / "t", **{**common, "ema": None})
    with pytest.raises(ValueError, match="interval"):
        run_sweep(run, tmp_path / "t", **{**common, "intervals": [(0.9, 0.1)]})
    with pytest.raises(ValueError, match="metric"):
        run_sweep(run, tmp_path / "t", **{**common, "metric": "kid"})
    model = Path(result.best["model"])
    with pytest.raises(ValueError, match="one exported model"):
        run_sweep(model, tmp_path / "t", **common)
    # an exported model is swept over guidance alone
    single = run_sweep(model, tmp_path / "m", **{**common, "ema": None, "intervals": [(0.0, 1.0)]})
    assert [r["ema"] for r in single.rows] == ["model", "model"]


def test_sweep_command_errors_are_one_sentence(trained, tmp_path, capsys):
    run, ref = trained
    assert (
        main(["sweep", str(tmp_path), "--guidance", "1", "--num", "4", "--ref", str(ref), "--out", str(tmp_path / "o")])
        == 2
    )
    assert "neither a training run" in capsys.readouterr().err
    assert main([*_sweep_args(run, ref, tmp_path / "o"), "--ema", "0.9"]) == 2
    assert "sigma_rel" in capsys.readouterr().err


def test_plot_marks_the_best_point(tmp_path):
    rows = [
        {"ema": e, "interval": [0.1, 0.9], "guidance": g, "value": 10 - g + (1 if e == "0.1" else 0)}
        for e in ("0.05", "0.1")
        for g in (1.0, 1.5, 2.0)
    ]
    path = plot_sweep(rows, tmp_path / "p.png", metric="fid", title="t")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="No sweep results"):
        plot_sweep([], tmp_path / "q.png", metric="fid")


def test_sample_records_its_precision_and_software_versions(tmp_path):
    from train_helpers import tiny_jit

    import pixelgen

    pixelgen.save_pretrained(tiny_jit(), tmp_path / "model")
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        argv = ["sample", "--checkpoint", str(tmp_path / "model"), "--out", str(out), "--num-samples", "2"]
        argv += ["--per-class", "1", "--sampler", "euler", "--steps", "1", "--precision", precision, "--device", "cpu"]
        assert main([*argv, "--no-progress"]) == 0
        manifest = json.loads((out / "run.json").read_text())
        assert manifest["precision"] == precision and manifest["seed"] == 0
        assert manifest["autocast"] == (None if precision == "fp32" else "torch.bfloat16")
        assert {"torch", "pixelgen", "python"} <= set(manifest["versions"])


def test_the_classic_ema_joins_the_sweep_at_the_same_step(trained, tmp_path):
    import pixelgen
    from pixelgen.train import load_training_checkpoint

    run, ref = trained
    common = dict(reference=ref, guidance=[1.0], num=4, sampler="euler", sampler_params={"num_steps": 1})
    common.update(inception=TinyFeatures(), cache_dir=tmp_path / "cache", progress=False)
    result = run_sweep(run, tmp_path / "s", ema=[0.07, "classic"], **common)
    assert [r["ema"] for r in result.rows] == ["0.07", "classic"]
    classic = next(r for r in result.rows if r["ema"] == "classic")
    assert classic["reconstruction"]["step"] == 16 and classic["reconstruction"]["decay"] == 0.9
    model = pixelgen.load_pretrained(classic["model"])
    ema = load_training_checkpoint(run)["ema"]
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())
    with pytest.raises(FileNotFoundError, match="No training checkpoint"):
        run_sweep(run, tmp_path / "t", ema=["classic"], step=8, **common)
