"""Post-hoc EMA: the power profile and its width, the updates, snapshots, reconstruction, trainer and command."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from posthoc_helpers import Toy, follow, posthoc_config, train_run

import pixelgen
from pixelgen.train import load_training_checkpoint
from pixelgen.train.posthoc_ema import (
    MAX_SIGMA_REL,
    PostHocEMA,
    export_reconstruction,
    gamma_to_sigma_rel,
    list_snapshots,
    load_snapshot,
    power_ema_beta,
    power_profile_weights,
    profile_inner_products,
    reconstruct,
    sigma_rel_to_gamma,
    solve_profile,
)

HERE = Path(__file__).parent


# -- the profile -------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.floats(0.005, MAX_SIGMA_REL))
def test_sigma_rel_and_gamma_are_inverse(sigma):
    gamma = sigma_rel_to_gamma(sigma)
    assert gamma >= 0
    assert gamma_to_sigma_rel(gamma) == pytest.approx(sigma, rel=1e-9, abs=1e-12)


def test_known_widths_and_the_width_of_the_weights():
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    assert sigma_rel_to_gamma(MAX_SIGMA_REL) == pytest.approx(0.0, abs=1e-9)  # the uniform average
    # the discrete weights of a long run have the width they are named by
    t = 20_000
    w = power_profile_weights(sigma_rel_to_gamma(0.07), t)
    tau = np.arange(1, t + 1) - 0.5
    mean = (w * tau).sum()
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    assert math.sqrt((w * (tau - mean) ** 2).sum()) / t == pytest.approx(0.07, rel=1e-3)
    for bad in (0.0, -0.1, 0.3, float("nan"), True, "0.1"):
        with pytest.raises(ValueError, match="sigma_rel"):
            sigma_rel_to_gamma(bad)


def test_inner_products_match_numerical_integration():
    from scipy.integrate import quad

    def p(tau, g, t):
        return (g + 1) * tau**g / t ** (g + 1) if tau <= t else 0.0

    cases = [(16.97, 1000.0, 6.94, 700.0), (6.94, 50.0, 6.94, 50.0), (0.5, 10.0, 11.2, 30.0)]
    for ga, ta, gb, tb in cases:
        product = lambda tau, ga=ga, ta=ta, gb=gb, tb=tb: p(tau, ga, ta) * p(tau, gb, tb)
        numeric, _ = quad(product, 0, min(ta, tb), epsabs=0, epsrel=1e-11)
        assert profile_inner_products([ga], [ta], [gb], [tb])[0, 0] == pytest.approx(numeric, rel=1e-8)
    # long runs: the powers overflow float64 unless taken in log space
    big = profile_inner_products([16.97], [8e5], [16.97], [8e5])[0, 0]
    assert np.isfinite(big) and big == pytest.approx((17.97**2 / 34.94) / 8e5, rel=1e-9)


def test_solve_profile_recovers_a_profile_in_the_span_and_reports_the_error():
    gammas, times = [6.94, 16.97, 6.94, 16.97], [100, 100, 200, 200]
    x, err = solve_profile(gammas, times, 16.97, 200)
    assert err < 1e-6 and x == pytest.approx([0, 0, 0, 1], abs=1e-6)
    x, err = solve_profile(gammas, times, sigma_rel_to_gamma(0.07), 200)
    assert 0 < err < 0.05  # four snapshots only: a rough fit, and the error says so


# -- updates -----------------------------------------------------------------------------------------------
def test_updates_follow_the_closed_form_weights_and_leave_frozen_parts_alone():
    rng = np.random.default_rng(0)
    trajectory = rng.normal(size=(40, 5)).cumsum(0)
    model = Toy()
    ema = PostHocEMA(model, [0.05, 0.2], every=10)
    follow(model, trajectory, ema)
    for gamma, avg in zip(ema.gammas, ema.averages):
        # the weights from the update rule itself: (1 - beta_tau) * prod_{s > tau} beta_s
        betas = np.array([power_ema_beta(t, gamma) for t in range(1, 41)])
        naive = np.array([(1 - betas[i]) * betas[i + 1 :].prod() for i in range(40)])
        np.testing.assert_allclose(naive, power_profile_weights(gamma, 40), rtol=1e-10, atol=1e-14)
        expected = power_profile_weights(gamma, 40) @ trajectory
        np.testing.assert_allclose(avg[0].double().numpy(), expected, rtol=2e-5, atol=2e-5)
    assert ema.names == ["weight"]
    assert power_ema_beta(1, 5.0) == 0.0  # the first step copies the weights
    with pytest.raises(ValueError, match="consecutive"):
        ema.update(42)
    with pytest.raises(ValueError, match="distinct"):
        PostHocEMA(model, [0.05, 0.05])
    with pytest.raises(ValueError, match="dtype"):
        PostHocEMA(model, [0.05], dtype="int8")


# -- reconstruction ----------------------------------------------------------------------------------------
def _snapshots_of(tmp: Path, trajectory: np.ndarray, sigmas, every: int, dtype: str = "fp32") -> PostHocEMA:
    model = Toy()
    ema = PostHocEMA(model, sigmas, every=every, dtype=dtype)
    follow(model, trajectory, ema, tmp)
    return ema


def test_reconstruction_from_a_synthetic_trajectory_matches_the_closed_form_average(tmp_path):
    """θ(τ) = (τ/T)^k for k = 0..4 sampled at step midpoints: the power average of width σ* at T is
    (γ*+1)/(γ*+k+1) in closed form. Reconstructed from snapshots of 0.05 and 0.10 every 100 of 2000 steps."""
    steps = 2000
    tau = (np.arange(1, steps + 1) - 0.5) / steps
    trajectory = np.stack([tau**k for k in range(5)], axis=1)
    _snapshots_of(tmp_path, trajectory, [0.05, 0.10], every=100)
    for target in (0.06, 0.07, 0.085, 0.12):
        gamma = sigma_rel_to_gamma(target)
        closed = np.array([(gamma + 1) / (gamma + k + 1) for k in range(5)])
        rec = reconstruct(tmp_path, target)
        got = rec.state_dict["weight"].double().numpy()
        # measured: largest absolute error 6.2e-6 over the four targets (values between 0.05 and 1)
        np.testing.assert_allclose(got, closed, atol=5e-5)
        assert rec.info["profile_error"] < 0.02
        assert rec.state_dict["frozen"].tolist() == [3.0, 3.0] and rec.state_dict["table"].tolist() == [0, 1, 2]
    # a reconstruction at an earlier step uses only the snapshots up to it
    early = reconstruct(tmp_path, 0.07, step=1000)
    assert max(s["step"] for s in early.info["snapshots"]) == 1000
    gamma = sigma_rel_to_gamma(0.07)
    closed_early = np.array([(gamma + 1) / (gamma + k + 1) * 0.5**k for k in range(5)])
    # ten snapshots per width: measured 4.1e-5
    np.testing.assert_allclose(early.state_dict["weight"].double().numpy(), closed_early, atol=2e-4)


def test_reconstruction_of_a_width_that_was_also_tracked_directly(tmp_path):
    """A noisy random walk (like SGD weights); 0.07 is tracked directly and reconstructed from 0.05 and 0.10 only.
    Error relative to the distance between the two tracked averages: measured 0.019% with fp32 snapshots and
    0.24% with fp16 ones (bf16: 2.5%), i.e. 1.7e-5 and 2.1e-4 of the weights' norm."""
    rng = np.random.default_rng(1)
    trajectory = rng.normal(size=(1500, 5)).cumsum(0) * 0.01 + rng.normal(size=(1500, 5)) * 0.05
    for dtype in ("fp32", "fp16"):
        run = tmp_path / dtype
        _snapshots_of(run, trajectory, [0.05, 0.07, 0.10], every=50, dtype=dtype)
        both = run / "both"
        (both / "posthoc_ema").mkdir(parents=True)
        for f in (run / "posthoc_ema").iterdir():
            if "sigma0.07-" not in f.name:
                shutil.copy(f, both / "posthoc_ema" / f.name)
        direct = reconstruct(run, 0.07).state_dict["weight"].double()
        assert reconstruct(run, 0.07).info["snapshots"] == [{"step": 1500, "sigma_rel": 0.07, "coefficient": 1.0}]
        rebuilt = reconstruct(both, 0.07).state_dict["weight"].double()
        spread = (reconstruct(run, 0.05).state_dict["weight"] - reconstruct(run, 0.10).state_dict["weight"]).double()
        rel = float((rebuilt - direct).norm() / spread.norm())
        assert rel < (1e-3 if dtype == "fp32" else 1e-2), rel


def test_snapshot_files_sizes_dtype_and_incomplete_sets(tmp_path, caplog):
    rng = np.random.default_rng(2)
    ema = _snapshots_of(tmp_path, rng.normal(size=(20, 5)), [0.05, 0.1], every=10, dtype="fp16")
    snaps = list_snapshots(tmp_path)
    assert [(s.step, s.sigma_rel) for s in snaps] == [(10, 0.05), (10, 0.1), (20, 0.05), (20, 0.1)]
    state, meta = load_snapshot(snaps[0], dtype=torch.float32)
    assert meta["dtype"] == "fp16" and meta["averaged"] == ["weight"] and set(state) == {"weight", "frozen", "table"}
    assert ema.snapshot_bytes() == 2 * 5 * 2  # two widths of five fp16 numbers
    # a file missing from a sharded set: the step is left out, with a warning
    (tmp_path / "posthoc_ema" / "step_0000030-sigma0.05-rank00000-of-00002.safetensors").write_bytes(b"")
    assert max(s.step for s in list_snapshots(tmp_path)) == 20
    assert "1 of 2 rank files" in caplog.text
    with pytest.raises(ValueError, match="last complete snapshot"):
        reconstruct(tmp_path, 0.07, step=25)
    with pytest.raises(FileNotFoundError, match="posthoc_ema"):
        list_snapshots(tmp_path / "nowhere")


# -- the trainer -------------------------------------------------------------------------------------------
def test_trainer_keeps_snapshots_and_leaves_the_classic_ema_exact(tmp_path):
    plain, _ = train_run(posthoc_config(tmp_path / "plain", "posthoc_ema.sigma_rels=[]"))
    on, result = train_run(posthoc_config(tmp_path / "on", "max_steps=13"))
    assert not (tmp_path / "plain" / "posthoc_ema").exists()
    assert "posthoc_ema" not in load_training_checkpoint(tmp_path / "plain")
    # the classic EMA and the weights are untouched by the post-hoc EMA (same run up to step 12)
    ref = posthoc_config(tmp_path / "plain13", "posthoc_ema.sigma_rels=[]", "max_steps=13")
    train_run(ref)
    a, b = load_training_checkpoint(tmp_path / "plain13"), load_training_checkpoint(tmp_path / "on")
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    # snapshots every 3 steps, plus the stopping step
    steps = sorted({s.step for s in list_snapshots(tmp_path / "on")})
    assert steps == [3, 6, 9, 12, 13]
    # a snapshot holds the averages as tracked (fp32 here), and its size is stated in the log
    state = b["posthoc_ema"]
    snap = next(s for s in list_snapshots(tmp_path / "on") if s.step == 13 and s.sigma_rel == 0.05)
    loaded, _ = load_snapshot(snap, dtype=torch.float32)
    assert all(torch.equal(loaded[k], v) for k, v in state["averages"]["0.05"].items())
    events = [json.loads(line) for line in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines()]
    saves = [e for e in events if e.get("event") == "posthoc_ema_snapshot"]
    params = sum(p.numel() for p in on.model.parameters())
    assert len(saves) == 5 and all(e["bytes"] > 2 * 4 * params for e in saves)  # two fp32 widths + headers
    # reconstruct through the command line: a folder load_pretrained reads
    from pixelgen.cli import main

    assert main(["ema", "reconstruct", str(tmp_path / "on"), "--sigma-rel", "0.07", "--out", str(tmp_path / "x")]) == 0
    model = pixelgen.load_pretrained(tmp_path / "x")
    rec = reconstruct(tmp_path / "on", 0.07)
    assert all(torch.equal(v, rec.state_dict[k]) for k, v in model.state_dict().items())
    info = json.loads((tmp_path / "x" / "config.json").read_text())["posthoc_ema"]
    assert info["step"] == 13 and info["sigma_rel"] == 0.07 and len(info["snapshots"]) == 10
    assert main(["ema", "list", str(tmp_path / "on")]) == 0
    assert main(["ema", "reconstruct", str(tmp_path / "on"), "--sigma-rel", "0.5", "--out", str(tmp_path / "y")]) == 2
    assert (
        main(["ema", "reconstruct", str(tmp_path / "plain"), "--sigma-rel", "0.1", "--out", str(tmp_path / "y")]) == 2
    )


def test_trainer_resume_continues_the_averages_exactly(tmp_path):
    train_run(posthoc_config(tmp_path / "a", "max_steps=10"))
    train_run(posthoc_config(tmp_path / "b", "max_steps=7", "ckpt_every=5"))
    # a crash after step 7's checkpoint... simulated by resuming from the step-7 checkpoint
    train_run(posthoc_config(tmp_path / "b", "max_steps=10"), resume="auto")
    a, b = load_training_checkpoint(tmp_path / "a"), load_training_checkpoint(tmp_path / "b")
    for sigma in ("0.05", "0.1"):
        assert all(
            torch.equal(a["posthoc_ema"]["averages"][sigma][k], v)
            for k, v in b["posthoc_ema"]["averages"][sigma].items()
        )
    sa, sb = list_snapshots(tmp_path / "a"), list_snapshots(tmp_path / "b")
    assert {(s.step, s.sigma_rel) for s in sa} < {(s.step, s.sigma_rel) for s in sb}  # b also has step 7
    by_key = {(s.step, s.sigma_rel): s for s in sb}
    for snap in sa:  # the snapshots after the resume point are written again, equal to the uninterrupted run's
        (x, mx), (y, my) = load_snapshot(snap), load_snapshot(by_key[(snap.step, snap.sigma_rel)])
        assert mx == my and set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x)
    # turning post-hoc EMA on for a run that has none cannot give the right averages: refused
    train_run(posthoc_config(tmp_path / "c", "max_steps=3", "posthoc_ema.sigma_rels=[]"))
    with pytest.raises(ValueError, match="without post-hoc EMA"):
        train_run(posthoc_config(tmp_path / "c", "max_steps=5"), resume="auto")
    with pytest.raises(ValueError, match="widths"):
        train_run(posthoc_config(tmp_path / "a", "max_steps=12", "posthoc_ema.sigma_rels=[0.05,0.2]"), resume="auto")


def test_reconstructing_a_trained_width_that_was_also_tracked(tmp_path):
    """A real (tiny) training run of 60 steps, snapshots every 4 (fp32): measured error 0.048% of the distance
    between the 0.05 and 0.10 averages (3.4e-6 of the weights' norm); the fitted profile's error is 0.43%."""
    train_run(
        posthoc_config(
            tmp_path / "run", "max_steps=60", "posthoc_ema.every=4", "posthoc_ema.sigma_rels=[0.05,0.07,0.1]"
        )
    )
    both = tmp_path / "both" / "posthoc_ema"
    both.mkdir(parents=True)
    for f in (tmp_path / "run" / "posthoc_ema").iterdir():
        if "sigma0.07-" not in f.name:
            shutil.copy(f, both / f.name)
    direct = reconstruct(tmp_path / "run", 0.07).state_dict
    rebuilt = reconstruct(tmp_path / "both", 0.07).state_dict
    lo, hi = reconstruct(tmp_path / "run", 0.05).state_dict, reconstruct(tmp_path / "run", 0.1).state_dict
    num = sum(float(((rebuilt[k] - direct[k]).double() ** 2).sum()) for k in direct)
    den = sum(float(((lo[k] - hi[k]).double() ** 2).sum()) for k in direct)
    assert math.sqrt(num / den) < 5e-3, math.sqrt(num / den)


def test_config_checks_the_posthoc_section():
    for override, match in (
        ("posthoc_ema.sigma_rels=[0.5]", "sigma_rel"),
        ("posthoc_ema.every=0", "every"),
        ("posthoc_ema.dtype=int8", "dtype"),
    ):
        with pytest.raises(ValueError, match=match):
            posthoc_config(Path("unused"), override)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp_ranks_write_their_shards_and_they_reassemble_to_the_gathered_state(tmp_path):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1", "--master_addr=127.0.0.1"]
    cmd += [f"--master_port={_free_port()}", str(HERE / "posthoc_helpers.py"), str(tmp_path), "fsdp"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "posthoc_ema").iterdir())
    assert "step_0000004-sigma0.05-rank00001-of-00002.safetensors" in names and len(names) == 2 * 2 * 2
    state = load_training_checkpoint(tmp_path)["posthoc_ema"]
    for snap in list_snapshots(tmp_path):
        if snap.step == 4:
            full, _ = load_snapshot(snap, dtype=torch.float32)
            for k, v in state["averages"][f"{snap.sigma_rel:g}"].items():
                assert torch.equal(full[k], v), k
    out = export_reconstruction(tmp_path, 0.07, tmp_path / "export")
    assert pixelgen.load_pretrained(out).num_classes == 4
