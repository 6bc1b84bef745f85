"""Injected faults in training: NaN gradients with a finite loss, two writers in one run folder, a frozen rank,
settings that would fail late, a full disk or a folder that cannot be written, and no host sync per step."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from train_helpers import RandomImages, SeededFlowMatching, tiny_encoders, tiny_jit

from pixelgen.train import (
    RunFolderError,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    apply_overrides,
    load_training_checkpoint,
    read_metrics,
)
from pixelgen.utils.io import DiskFullError, FolderNotWritableError, atomic_write

HERE = Path(__file__).parent


def config(out: Path, *extra: str) -> TrainConfig:
    return apply_overrides(
        TrainConfig(),
        [
            f"out_dir={out}",
            "max_steps=4",
            "data.batch_size=4",
            "data.num_workers=0",
            "sample.num_images=0",
            "optim.lr=1e-3",
            "log_every=1",
            "ckpt_every=1000",
            "export_ema=false",
            "ema_decay=0.9",
            "num_threads=1",
            *extra,
        ],
    )


def trainer(cfg: TrainConfig, objective=None, **kw) -> Trainer:
    torch.manual_seed(0)
    return Trainer(
        cfg,
        model=tiny_jit(),
        objective=objective if objective is not None else SeededFlowMatching(),
        dataset=RandomImages(n=12),
        progress=False,
        **kw,
    )


def fit(cfg: TrainConfig, objective=None, **kw):
    t = trainer(cfg, objective, **kw)
    try:
        return t, t.fit()
    finally:
        t.close()


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# -- NaN / inf gradients with a finite loss ------------------------------------------------------------------
class NaNGradAt(SeededFlowMatching):
    """A finite loss whose gradient for one parameter is NaN (or inf) on the listed calls (0-based)."""

    def __init__(self, bad_calls, value=float("nan"), param="final_layer.linear.bias"):
        super().__init__()
        self.bad_calls, self.value, self.param, self.calls = set(bad_calls), value, param, 0

    def forward(self, model, batch, step=0):
        out = super().forward(model, batch, step=step)
        if self.calls in self.bad_calls:
            p = model.get_parameter(self.param)
            handle = []
            handle.append(p.register_hook(lambda g: (handle[0].remove(), torch.full_like(g, self.value))[1]))
        self.calls += 1
        return out


@pytest.mark.parametrize("fused", [False, True], ids=["plain-adamw", "fused-adamw-skips-on-device"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_gradient_with_a_finite_loss_is_skipped_and_named(tmp_path, fused, value):
    cfg = config(tmp_path, "max_steps=4", "ckpt_every=1", f"optim.fused={str(fused).lower()}")
    assert cfg.optim.grad_clip is None  # the presets' setting, where the bad step used to be applied
    t, result = fit(cfg, NaNGradAt({2}, value))
    assert result.step == 4 and t.objective.calls == 5  # one extra forward for the skipped step
    assert all_finite(t.model.state_dict()) and all_finite(t.ema.state_dict())
    state = load_training_checkpoint(tmp_path)
    assert state["step"] == 4 and all_finite(state["model"]) and all_finite(state["ema"])
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    skipped = [e for e in events if e.get("event") == "skipped_step"]
    assert len(skipped) == 1 and skipped[0]["step"] == 2
    assert "model.final_layer.linear.bias" in skipped[0]["reason"] and "1 parameter(s)" in skipped[0]["reason"]
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["grad_norm"] > 0 for r in rows)


def test_a_skipped_step_leaves_weights_optimizer_and_ema_untouched(tmp_path):
    cfg = config(tmp_path, "max_steps=2", "optim.fused=true")
    t = trainer(cfg, NaNGradAt({1}))
    batches = t.batches()
    assert t.optimizer_step(batches).applied
    before = {k: v.clone() for k, v in t.modules.state_dict().items()}
    ema = {k: v.clone() for k, v in t.ema.state_dict().items()}
    opt = {k: {n: s.clone() for n, s in v.items()} for k, v in t.optimizer.state.items()}
    lr_steps = t.scheduler.last_epoch
    applied, values, problem = t.optimizer_step(batches)
    t.close()
    assert not applied and "final_layer.linear.bias" in problem and values["loss"] == values["loss"]  # finite loss
    assert all(torch.equal(before[k], v) for k, v in t.modules.state_dict().items())
    assert all(torch.equal(ema[k], v) for k, v in t.ema.state_dict().items())
    assert all(torch.equal(opt[k][n], s) for k, v in t.optimizer.state.items() for n, s in v.items())
    assert t.scheduler.last_epoch == lr_steps + 1  # wound back by fit() when it reads the flag


def test_a_late_found_skip_winds_the_step_counter_and_the_schedule_back(tmp_path):
    """Fused AdamW, flags read every 4 steps: the skip at the second attempt is found at the read point."""
    cfg = config(tmp_path, "max_steps=6", "log_every=4", "optim.fused=true", "optim.warmup_steps=10")
    t, result = fit(cfg, NaNGradAt({1}))
    assert result.step == 6 and t.objective.calls == 7
    assert t.scheduler.last_epoch == 6 and t.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 7 / 10)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [4, 6]
    assert rows[0]["lr"] == pytest.approx(1e-3 * 4 / 10)  # step 4's own rate: the schedule counts applied steps
    state = load_training_checkpoint(tmp_path)
    assert state["optimizer"]["state"][0]["step"].item() == 6  # Adam's own count skipped the attempt too


def test_bad_steps_in_a_row_stop_the_run_and_name_the_checkpoint_that_is_good(tmp_path):
    cfg = config(tmp_path, "max_steps=20", "ckpt_every=2", "max_bad_steps=3")
    with pytest.raises(TrainingDiverged, match=r"3 steps in a row.*last good checkpoint is .*latest.pt \(step 2\)"):
        fit(cfg, NaNGradAt({3, 4, 5, 6}))
    assert load_training_checkpoint(tmp_path)["step"] == 2


def test_a_non_finite_state_is_never_written(tmp_path):
    cfg = config(tmp_path, "max_steps=2", "ckpt_every=2")
    t, _ = fit(cfg)
    t = trainer(config(tmp_path, "max_steps=2"), resume="auto")
    with torch.no_grad():
        t.model.final_layer.linear.weight[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"not finite \(model.final_layer.linear.weight.*not saved.*step 2\)"):
        t.save_checkpoint()
    t.close()
    state = load_training_checkpoint(tmp_path)
    assert state["step"] == 2 and all_finite(state["model"])


def test_a_checkpoint_with_nan_weights_is_not_resumed(tmp_path):
    fit(config(tmp_path, "max_steps=1"))
    path = tmp_path / "checkpoints" / "latest.pt"
    state = torch.load(path, weights_only=True)
    state["ema"]["final_layer.linear.weight"][0, 0] = float("inf")
    torch.save(state, path)
    with pytest.raises(TrainingDiverged, match="ema.final_layer.linear.weight"):
        trainer(config(tmp_path), resume="auto")


# -- one writer per run folder -----------------------------------------------------------------------------
def test_a_second_writer_is_refused_while_the_first_is_alive(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tmp_path.mkdir(exist_ok=True)
        lock = {"host": socket.gethostname(), "pid": holder.pid, "started": "2026-01-01T00:00:00+00:00"}
        (tmp_path / ".lock").write_text(json.dumps(lock))
        with pytest.raises(RunFolderError, match=f"in use by process {holder.pid} on host"):
            trainer(config(tmp_path))
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == holder.pid  # the owner keeps its lock
    finally:
        holder.kill()
        holder.wait()
    # The owner died: its lock is stale and the next run takes it over, then releases it.
    t, result = fit(config(tmp_path, "max_steps=1"))
    assert result.step == 1 and not (tmp_path / ".lock").exists()


def test_a_run_folder_holding_a_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    fit(config(tmp_path, "max_steps=2"))
    with pytest.raises(RunFolderError, match=r"already holds a run; pass --resume .* or --overwrite"):
        trainer(config(tmp_path, "max_steps=2"))
    assert load_training_checkpoint(tmp_path)["step"] == 2  # untouched
    (tmp_path / "notes.txt").write_text("mine")
    _, result = fit(config(tmp_path, "max_steps=1"), overwrite=True)
    assert result.step == 1 and load_training_checkpoint(tmp_path)["step"] == 1
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1]  # one history, not two
    assert (tmp_path / "notes.txt").read_text() == "mine"  # only the run's own outputs were removed


def test_metrics_never_repeat_a_step_after_a_resume(tmp_path):
    cfg = config(tmp_path, "max_steps=8", "ckpt_every=2")
    t = trainer(cfg)

    def crash(tr, record):
        if tr.step == 5:
            raise RuntimeError("simulated crash")

    t.add_callback("after_step", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        t.fit()
    t.close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]
    assert load_training_checkpoint(tmp_path)["step"] == 4
    fit(config(tmp_path, "max_steps=6", "ckpt_every=2"), resume="auto")
    steps = [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_startup_removes_only_dead_writers_temporaries(tmp_path):
    fit(config(tmp_path, "max_steps=1"))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    left = [
        tmp_path / f".loss_curve.png.{dead_pid}.ab12cd34.tmp",  # a kill while the curve was written
        tmp_path / "checkpoints" / f".latest.pt.{dead_pid}.00ff00ff.tmp",
        tmp_path / "samples" / f".step_0000001.png.{dead_pid}.12345678.tmp",
    ]
    live = tmp_path / f".config.json.{os.getppid()}.deadbeef.tmp"  # a live process's write in progress
    for p in [*left, live]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
    fit(config(tmp_path, "max_steps=2"), resume="auto")
    assert not any(p.exists() for p in left) and live.exists()


# -- settings that would fail late ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["sample.params.num_steps=0"], "num_steps"),
        (["sample.sampler=huen"], "heun"),
        (["sample.params.guidence=2.0"], "guidance"),
        (["sample.labels=[0, 9]"], r"sample.labels.*9"),
        (["sample.batch_size=0"], "sample.batch_size"),
    ],
)
def test_sample_grid_settings_are_checked_before_step_0(tmp_path, overrides, message):
    calls = []
    with pytest.raises(ValueError, match=message):
        t = trainer(config(tmp_path, "sample.num_images=2", "sample.every=1000", *overrides))
        t.add_callback("after_step", lambda *a: calls.append(1))
        t.fit()
    assert calls == [] and not (tmp_path / "checkpoints").exists()
    assert not (tmp_path / ".lock").exists()  # the refused run released its folder


def test_export_needs_a_backbone_it_can_save(tmp_path):
    class Wrapped(torch.nn.Module):  # a backbone without the arch/config that save_pretrained writes
        def __init__(self):
            super().__init__()
            self.inner = tiny_jit()

        def forward(self, *args, **kwargs):
            return self.inner(*args, **kwargs)

    model = Wrapped()
    with pytest.raises(ValueError, match="export_ema=false"):
        Trainer(
            config(tmp_path, "export_ema=true"), model=model, objective=SeededFlowMatching(), dataset=RandomImages()
        )


# -- full disk, read-only folder --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code, error, message",
    [
        (errno.ENOSPC, DiskFullError, r"No space left on device .* \(need about \d+ MB, \d+ MB free\)"),
        (errno.EROFS, FolderNotWritableError, r"Cannot write folder .*checkpoints \(read-only"),
        (errno.EACCES, FolderNotWritableError, r"Cannot write folder .*checkpoints"),
    ],
)
def test_a_failed_checkpoint_write_says_why_and_keeps_the_previous_one(tmp_path, monkeypatch, code, error, message):
    import pixelgen.utils.io as io

    cfg = config(tmp_path, "max_steps=6", "ckpt_every=2")
    t = trainer(cfg)
    real_save, calls = torch.save, []

    def failing_save(obj, f, *a, **k):
        calls.append(1)
        if len(calls) == 2:  # the second checkpoint: half written, then the device refuses
            real_save({"partial": torch.zeros(10)}, f)
            raise OSError(code, os.strerror(code))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(io.torch, "save", failing_save)
    with pytest.raises(error, match=message):
        t.fit()
    t.close()
    monkeypatch.undo()
    state = load_training_checkpoint(tmp_path)
    assert state["step"] == 2 and all_finite(state["model"])
    assert not list(tmp_path.rglob("*.tmp")) and not (tmp_path / ".lock").exists()
    # The run continues from its last checkpoint.
    _, result = fit(config(tmp_path, "max_steps=6", "ckpt_every=2"), resume="auto")
    assert result.step == 6


def tiny_run_command(tmp_path: Path) -> list[str]:
    """``pixelgen train --config FILE`` for a tiny class-to-image run on the built-in demo data."""
    cfg = config(tmp_path / "run", "max_steps=1", "model.name=jit", *_tiny_model_overrides())
    path = tmp_path / "tiny.json"
    path.write_text(cfg.to_json())
    return ["train", "--config", str(path), "--no-progress"]


def test_the_command_line_says_the_disk_is_full_in_one_sentence(tmp_path, monkeypatch, capsys):
    import pixelgen.utils.io as io
    from pixelgen.cli import main

    def full(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.torch, "save", full)
    code = main(tiny_run_command(tmp_path))
    err = capsys.readouterr().err
    assert code == 1 and "error: No space left on device" in err and "Traceback" not in err


def test_the_same_command_twice_is_refused_then_overwritten_on_request(tmp_path, capsys):
    """``make demo`` twice: the second run would clobber the first; it is refused with the two ways out."""
    from pixelgen.cli import main

    run = lambda *flags: main([*tiny_run_command(tmp_path), *flags])
    assert run() == 0
    capsys.readouterr()
    assert run() == 2
    err = capsys.readouterr().err
    assert "already holds a run; pass --resume to continue it or --overwrite to start over" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert run("--overwrite") == 0 and run("--resume", "--set", "max_steps=2") == 0
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2]


def _tiny_model_overrides() -> list[str]:
    return [
        'model.overrides={"input_size": 16, "patch_size": 4, "hidden_size": 32, "depth": 2, "num_heads": 2, '
        '"num_classes": 10, "bottleneck_dim": 16, "in_context_len": 2, "in_context_start": 1}',
        "data.dataset=demo",
        "data.resolution=16",
        "objective.preset=jit_repa",
        "objective.overrides=" + json.dumps({"align_layer": 1, "encoders": tiny_encoders()}),
    ]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_the_atomic_writer_honours_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        with atomic_write(tmp_path / "f.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o666 & ~umask


# -- logs a person reads --------------------------------------------------------------------------------------
def test_train_log_has_a_line_every_log_every_steps(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="pixelgen"):
        fit(config(tmp_path, "max_steps=4", "log_every=2"))
    lines = (tmp_path / "train.log").read_text().splitlines()
    progress = [line for line in lines if " step " in line and "img/s" in line]
    assert len(progress) == 2 and "step 2/4" in progress[0] and "step 4/4" in progress[1]
    assert all("loss " in line and "fm_loss " in line and "ETA " in line for line in progress)
    assert sum("img/s" in r.getMessage() for r in caplog.records) == 2  # no bar: the lines also go to the logger


def test_without_matplotlib_the_curve_is_skipped_with_one_sentence(tmp_path, monkeypatch, caplog):
    import pixelgen.train.metrics as metrics

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setattr(metrics, "_warned_no_matplotlib", False)
    rows = [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]
    assert metrics.plot_loss_curve(rows, tmp_path / "a.png") is None
    assert metrics.plot_loss_curve(rows, tmp_path / "b.png") is None
    assert [r.getMessage() for r in caplog.records].count(
        "matplotlib is not installed, so no loss curve is drawn (pip install 'pixelgen[train]')."
    ) == 1


def test_grids_go_through_torchvision_with_captions(tmp_path):
    from PIL import Image

    from pixelgen.utils.images import make_image_grid, save_image_grid

    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    exact = make_image_grid(images, nrow=2, padding=0)
    assert exact.shape == (3, 16, 16) and torch.equal(exact[:, 8:, 8:], images[3])  # tiles placed exactly
    path = save_image_grid(images, tmp_path / "g.png", captions=["cat", "dog", "a long caption " * 4, ""])
    grid = torch.from_numpy(__import__("numpy").array(Image.open(path))).permute(2, 0, 1)
    assert grid.shape[1] > grid.shape[2]  # caption strips under each 64 px tile
    with pytest.raises(ValueError, match="4 images but 3 captions"):
        make_image_grid(images, captions=["a", "b", "c"])


# -- no host sync in steady state --------------------------------------------------------------------------
SYNC_METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")


def _count_syncs(monkeypatch, counter: list) -> None:
    """Count reads of tensor values, except the trainer's checks of a batch that is still on the host (on a GPU
    those read CPU memory; on this CPU-only machine every read looks alike)."""

    def on_host_batch_check() -> bool:
        frame = sys._getframe(2)
        while frame is not None:
            if frame.f_code.co_name == "_check_batch_on_host":
                return True
            frame = frame.f_back
        return False

    for name in SYNC_METHODS:
        original = getattr(torch.Tensor, name)

        def counting(self, *a, _original=original, **k):
            if not on_host_batch_check():
                counter[0] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counting)


@pytest.mark.parametrize("objective", ["seeded", "jit_repa"])
def test_steps_that_do_not_log_read_nothing_back_from_the_device(tmp_path, monkeypatch, objective):
    import pixelgen

    torch.manual_seed(0)
    data = RandomImages(n=4, size=16)
    batch = {"image": data.images, "raw": (data.images + 1) / 2, "label": torch.arange(4)}
    cfg = config(tmp_path, "max_steps=9", "log_every=4", "optim.fused=true", "optim.grad_clip=1.0")
    obj = (
        SeededFlowMatching()
        if objective == "seeded"
        else pixelgen.build_objective(
            "jit_repa", hidden_size=32, align_layer=1, encoders=tiny_encoders(), check_finite=False
        )
    )
    model = tiny_jit()
    if objective == "seeded":
        model.check_inputs = False  # this stand-in calls the backbone directly (the real objective skips its checks)
    t = Trainer(cfg, model=model, objective=obj, loader=[batch], progress=False)
    counter, per_step = [0], {}

    def record(tr, rec):
        per_step[tr.step] = counter[0]
        counter[0] = 0

    t.add_callback("after_step", record)
    _count_syncs(monkeypatch, counter)
    t.fit()
    monkeypatch.undo()
    t.close()
    # Step k's count covers its own step and the read after step k-1: only reads after steps 4 and 8 sync.
    quiet = {k: v for k, v in per_step.items() if k >= 2 and (k - 1) % 4 != 0}
    assert set(quiet) == {2, 3, 4, 6, 7, 8} and all(v == 0 for v in quiet.values()), per_step
    assert per_step[5] > 0 and per_step[9] > 0  # the reads at the log steps are counted (the counter works)


# -- a frozen rank ---------------------------------------------------------------------------------------------
FROZEN = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {here!r})
    from train_helpers import RandomImages, SeededFlowMatching, tiny_encoders, tiny_jit
    from pixelgen.train import Trainer, TrainConfig, apply_overrides
    from pixelgen.distributed import RankStoppedAnswering

    class FreezesOnRank1(SeededFlowMatching):
        calls = 0
        def forward(self, model, batch, step=0):
            FreezesOnRank1.calls += 1
            if os.environ["RANK"] == "1" and FreezesOnRank1.calls == 3:
                time.sleep(12)                      # a hung data loader, a stuck device ...
            return super().forward(model, batch, step=step)

    cfg = apply_overrides(TrainConfig(), ["out_dir={out}", "max_steps=6", "data.batch_size=2", "data.num_workers=0",
        "sample.num_images=0", "export_ema=false", "log_every=1", "dist_timeout_minutes=0.05", "num_threads=1"])
    trainer = Trainer(cfg, model=tiny_jit(), objective=FreezesOnRank1(), dataset=RandomImages(n=8), progress=False)
    try:
        trainer.fit()
    except RankStoppedAnswering as exc:
        print(f"rank {{os.environ['RANK']}}: {{exc}}", file=sys.stderr, flush=True)
        sys.exit(3)
    """
)


def test_a_frozen_rank_ends_every_rank_with_a_sentence_naming_it(tmp_path):
    script = tmp_path / "frozen.py"
    script.write_text(FROZEN.format(here=str(HERE), out=str(tmp_path / "run")))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        str(script),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert "rank 0: Rank 1 stopped answering" in output, output[-3000:]
    assert "waited 0.05 minutes (dist_timeout_minutes)" in output


def test_the_host_side_batch_check_says_what_the_objective_would(tmp_path):
    """The trainer checks each batch while it is on the CPU and the objective then skips its own (device) check:
    a 0-255 batch or a label out of range is still one sentence, before anything is trained on it."""
    import pixelgen

    obj = pixelgen.build_objective("jit_repa", hidden_size=32, align_layer=1, encoders=tiny_encoders())
    images = torch.rand(4, 3, 16, 16) * 255
    bad = {"image": images, "raw": images / 255, "label": torch.arange(4)}
    t = Trainer(config(tmp_path), model=tiny_jit(), objective=obj, loader=[bad], progress=False)
    with pytest.raises(ValueError, match="0-255 pixel values"):
        t.optimizer_step(t.batches())
    good = torch.rand(4, 3, 16, 16) * 2 - 1
    t.loader = [{"image": good, "raw": (good + 1) / 2, "label": torch.tensor([0, 1, 2, 7])}]
    with pytest.raises(ValueError, match=r"class indices in \[0, 4\]"):
        t.optimizer_step(t.batches())
    t.close()
