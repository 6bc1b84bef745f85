"""The training engine: config overrides, EMA, resume exactness, NaN handling, crash-safe checkpoints, stages."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from train_helpers import NaNAt, RandomImages, SeededFlowMatching, tiny_encoders, tiny_jit

from pixelgen.train import (
    EMA,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    apply_overrides,
    load_training_checkpoint,
    parse_override_value,
    sample_seeds,
)
from pixelgen.utils.io import CheckpointError

HERE = Path(__file__).parent


def small_config(out: Path, *extra: str) -> TrainConfig:
    return apply_overrides(
        TrainConfig(),
        [
            f"out_dir={out}",
            "max_steps=6",
            "data.batch_size=4",
            "data.num_workers=0",
            "sample.num_images=0",
            "optim.lr=1e-3",
            "log_every=1",
            "ckpt_every=1000",
            "export_ema=false",
            "ema_decay=0.9",
            "num_threads=1",  # tiny tensors: one thread is as fast, and robust when the cores are shared
            *extra,
        ],
    )


def run(cfg: TrainConfig, *, objective=None, resume=None, dataset=None):
    torch.manual_seed(0)  # injected parts are built here, so seed them like the trainer seeds its own
    trainer = Trainer(
        cfg,
        model=tiny_jit(),
        objective=objective if objective is not None else SeededFlowMatching(),
        dataset=dataset if dataset is not None else RandomImages(n=12),
        resume=resume,
        progress=False,
    )
    result = trainer.fit()
    trainer.close()
    return trainer, result


def assert_states_equal(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{path} keys differ"
        for k in a:
            assert_states_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_states_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


# -- config ------------------------------------------------------------------------------------------------
def test_overrides_reach_every_section_and_round_trip_through_json():
    cfg = apply_overrides(
        TrainConfig(),
        [
            "optim.lr=2e-4",
            "optim.betas=[0.9, 0.95]",
            "optim.grad_clip=1.0",
            "model.overrides.proj_drop=0.0",
            "data.root=/data/in1k",
            "sample.params.guidance=1.0",
            "max_steps=10",
            "init_from=null",
        ],
    )
    assert cfg.optim.lr == 2e-4 and cfg.optim.betas == (0.9, 0.95) and cfg.optim.grad_clip == 1.0
    assert cfg.model.overrides == {"proj_drop": 0.0} and cfg.data.root == "/data/in1k"
    assert cfg.sample.params["guidance"] == 1.0 and cfg.max_steps == 10
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", "Unknown config key"),
        ("nosuch=1", "Unknown config key"),
        ("optim.lr", "key=value"),
        ("optim.lr=-1", "lr must be positive"),
        ("strategy=zero", "strategy must be"),
    ],
)
def test_bad_overrides_fail_with_one_sentence(override, message):
    with pytest.raises((KeyError, ValueError), match=message):
        apply_overrides(TrainConfig(), [override])


@given(
    st.one_of(
        st.integers(-(10**6), 10**6),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
        st.none(),
        st.lists(st.integers(0, 9), max_size=4),
    )
)
def test_override_values_parse_as_json(value):
    assert parse_override_value(json.dumps(value)) == value


@given(st.integers(0, 2**40), st.integers(0, 10**6), st.integers(1, 16), st.integers(0, 16))
@settings(max_examples=50)
def test_sample_seeds_depend_only_on_the_global_index(seed, start, count, split):
    split = min(split, count)
    whole = sample_seeds(seed, start, count)
    parts = torch.cat([sample_seeds(seed, start, split), sample_seeds(seed, start + split, count - split)])
    assert torch.equal(whole, parts) and len(set(whole.tolist())) == count and (whole >= 0).all()


# -- EMA ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("average_frozen", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ema_follows_the_formula_frozen_parameters_included_by_default(dtype, average_frozen):
    model = tiny_jit().to(dtype)
    ema = EMA(model, decay=0.75, average_frozen=average_frozen)
    start = {k: v.clone() for k, v in ema.model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update()
    for name, p in model.named_parameters():
        averaged = p.requires_grad or average_frozen
        expected = 0.75 * start[name] + 0.25 * p.detach().float() if averaged else start[name]
        torch.testing.assert_close(ema.model.state_dict()[name], expected, rtol=0, atol=1e-6)
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in ema.model.parameters())
    assert not ema.model.training


def test_ema_updates_once_per_optimiser_step_with_accumulation(tmp_path):
    cfg = small_config(tmp_path, "max_steps=3", "optim.grad_accum=2", "ema_decay=0.5")
    trainer = Trainer(cfg, model=tiny_jit(), objective=SeededFlowMatching(), dataset=RandomImages(n=12), progress=False)
    calls = []
    original = trainer.ema.update
    trainer.ema.update = lambda: (calls.append(trainer.step), original())[1]
    trainer.fit()
    trainer.close()
    assert calls == [0, 1, 2]
    assert (
        trainer.loader.state_dict()["consumed"] == 0 and trainer.loader.state_dict()["epoch"] == 2
    )  # 6 batches of 4 = 2 epochs


# -- device -----------------------------------------------------------------------------------------------
def test_training_device_is_this_ranks_gpu(monkeypatch):
    from pixelgen.distributed import training_device

    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert training_device(None) == training_device("cuda") == torch.device("cuda:3")  # not cuda:0 on every rank
    assert training_device("cuda:1") == torch.device("cuda:1") and training_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training_device(None) == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        training_device("cuda")


# -- optimiser set-up --------------------------------------------------------------------------------------
def test_optimizer_has_paper_defaults_and_leaves_out_the_frozen_pos_embed(tmp_path):
    trainer = Trainer(
        small_config(tmp_path), model=tiny_jit(), objective=SeededFlowMatching(), dataset=RandomImages(), progress=False
    )
    groups = trainer.optimizer.param_groups
    assert [g["name"] for g in groups] == ["model", "objective"]
    assert all(g["betas"] == (0.9, 0.999) and g["eps"] == 1e-8 and g["weight_decay"] == 0.0 for g in groups)
    ids = {id(p) for p in groups[0]["params"]}
    assert id(trainer.model.pos_embed) not in ids and len(ids) == sum(
        p.requires_grad for p in trainer.model.parameters()
    )
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in trainer.objective.parameters()}
    trainer.close()


# -- overfitting -------------------------------------------------------------------------------------------
class FixedDraws(torch.nn.Module):
    """The real objective with the same t, noise and label drop at every call: one batch, one set of draws."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, model, batch, step=0):
        return self.inner(model, batch, step=step, generator=torch.Generator().manual_seed(0))


def test_a_tiny_model_overfits_one_batch_with_the_full_objective(tmp_path):
    import pixelgen

    torch.manual_seed(0)
    data = RandomImages(n=4, size=16)
    batch = {"image": data.images, "raw": (data.images + 1) / 2, "label": torch.arange(4)}
    objective = pixelgen.build_objective("pixelgen", hidden_size=32, align_layer=1, encoders=tiny_encoders())
    cfg = small_config(tmp_path, "max_steps=60", "optim.lr=3e-3", "log_every=1")
    trainer = Trainer(cfg, model=tiny_jit(), objective=FixedDraws(objective), loader=[batch], progress=False)
    trainer.fit()
    trainer.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert {"flow_matching", "repa", "lpips", "pdino", "percept_weight"} <= set(rows[0])
    first, last = rows[0]["loss"], rows[-1]["loss"]
    assert last < first / 5, (first, last)
    assert rows[-1]["flow_matching"] < rows[0]["flow_matching"] / 5


def test_the_objective_the_trainer_builds_has_its_nan_named_by_the_trainer(tmp_path):
    """The trainer checks the terms with the objective's fused check (no host sync) and names a NaN term with it."""
    cfg = small_config(tmp_path, "max_steps=1", "objective.preset=jit_repa")
    cfg.objective.overrides = {"align_layer": 1, "encoders": tiny_encoders()}
    trainer = Trainer(cfg, model=tiny_jit(), dataset=RandomImages(), progress=False)
    assert trainer.objective.check_finite  # its own check, which the step runs fused on the device
    term = trainer.objective.terms["repa"]
    term.forward = lambda *a, **k: torch.tensor(float("nan"))
    applied, values, problem = trainer.optimizer_step(trainer.batches())
    trainer.close()
    assert not applied and "repa" in problem and "flow_matching" not in problem


# -- resume exactness --------------------------------------------------------------------------------------
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    # 12 samples in batches of 4: 8 steps cross two epoch boundaries, and the stop falls mid-epoch.
    straight, _ = run(small_config(tmp_path / "a", "max_steps=8"))
    run(small_config(tmp_path / "b", "max_steps=5"))
    resumed, result = run(small_config(tmp_path / "b", "max_steps=8"), resume="auto")
    assert result.step == 8
    a = load_training_checkpoint(tmp_path / "a")
    b = load_training_checkpoint(tmp_path / "b")
    for key in ("model", "ema", "optimizer", "objective", "data", "scheduler", "rng", "step", "samples_seen"):
        assert_states_equal(a[key], b[key], key)
    # The loss history after the resume point is the same too.
    rows = lambda d: {
        r["step"]: r["loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if "loss" in r
    }
    ra, rb = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert all(ra[s] == rb[s] for s in range(6, 9))


def test_resume_auto_without_a_checkpoint_starts_fresh_and_a_missing_path_fails(tmp_path):
    trainer, result = run(small_config(tmp_path, "max_steps=2"), resume="auto")
    assert result.step == 2
    with pytest.raises(CheckpointError, match="does not exist"):
        Trainer(
            small_config(tmp_path / "x"),
            model=tiny_jit(),
            objective=SeededFlowMatching(),
            dataset=RandomImages(),
            resume=str(tmp_path / "nope.pt"),
            progress=False,
        )


# -- NaN / inf handling ------------------------------------------------------------------------------------
def test_a_nan_loss_skips_the_step_and_names_the_term(tmp_path):
    cfg = small_config(tmp_path, "max_steps=3")
    objective = NaNAt(SeededFlowMatching(), bad_calls={1})
    trainer = Trainer(cfg, model=tiny_jit(), objective=objective, dataset=RandomImages(n=12), progress=False)
    seen = []
    original = trainer.ema.update
    trainer.ema.update = lambda: (
        seen.append({k: v.clone() for k, v in trainer.model.state_dict().items()}),
        original(),
    )[1]
    result = trainer.fit()
    trainer.close()
    assert result.step == 3 and objective.calls == 4  # one extra forward for the skipped step
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    skipped = [e for e in events if e.get("event") == "skipped_step"]
    assert len(skipped) == 1 and "fm_loss" in skipped[0]["reason"] and skipped[0]["step"] == 1
    assert len(seen) == 3  # no EMA update for the skipped step


def test_k_bad_steps_in_a_row_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path):
    cfg = small_config(tmp_path, "max_steps=20", "ckpt_every=2", "max_bad_steps=3")
    objective = NaNAt(SeededFlowMatching(), bad_calls={3, 4, 5, 6, 7})
    trainer = Trainer(cfg, model=tiny_jit(), objective=objective, dataset=RandomImages(n=12), progress=False)
    with pytest.raises(TrainingDiverged, match="3 steps in a row"):
        trainer.fit()
    trainer.close()
    assert trainer.step == 3
    state = load_training_checkpoint(tmp_path)
    assert state["step"] == 2  # step 3 was never saved: the run stopped without overwriting 'latest'
    assert objective.calls == 6


def test_objective_raising_floating_point_error_counts_as_a_bad_step(tmp_path):
    class Raises(SeededFlowMatching):
        def forward(self, model, batch, step=0):
            raise FloatingPointError("lpips_loss contains 1 NaN value(s).")

    with pytest.raises(TrainingDiverged, match="lpips_loss"):
        run(small_config(tmp_path, "max_bad_steps=2"), objective=Raises())


# -- crash safety ------------------------------------------------------------------------------------------
def test_a_process_killed_while_writing_a_checkpoint_leaves_the_previous_one_loadable(tmp_path):
    """The child trains 4 steps (checkpoint at step 2), then dies by SIGKILL half-way through writing step 4's."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys, torch
        sys.path.insert(0, {str(HERE)!r})
        from train_helpers import RandomImages, SeededFlowMatching, tiny_jit
        from pixelgen.train import Trainer, TrainConfig, apply_overrides
        cfg = apply_overrides(TrainConfig(), ["out_dir={tmp_path}", "max_steps=4", "ckpt_every=2", "data.batch_size=4",
            "data.num_workers=0", "sample.num_images=0", "export_ema=false"])
        trainer = Trainer(cfg, model=tiny_jit(), objective=SeededFlowMatching(), dataset=RandomImages(n=12), progress=False)
        real_save, calls = torch.save, []
        def dying_save(obj, f, *a, **k):
            calls.append(1)
            if len(calls) == 2:                      # the second checkpoint: write half of it, then die
                real_save(obj, f, *a, **k)
                size = os.path.getsize(f)
                with open(f, "r+b") as fh:
                    fh.truncate(size // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(obj, f, *a, **k)
        torch.save = dying_save
        trainer.fit()
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    ckpt_dir = tmp_path / "checkpoints"
    assert list(ckpt_dir.glob(".latest.pt.*.tmp")), "the half-written temporary file should still be there"
    state = load_training_checkpoint(tmp_path)
    assert state["step"] == 2
    # A new run resumes from it and removes the stale temporary.
    trainer, result = run(small_config(tmp_path, "max_steps=3"), resume="auto")
    assert result.step == 3 and not list(ckpt_dir.glob(".*.tmp"))


def test_sigterm_stops_after_the_step_with_a_checkpoint(tmp_path):
    script = textwrap.dedent(
        f"""
        import os, signal, sys, json
        sys.path.insert(0, {str(HERE)!r})
        from train_helpers import RandomImages, SeededFlowMatching, tiny_jit
        from pixelgen.train import Trainer, TrainConfig, apply_overrides

        class TermAt(SeededFlowMatching):
            calls = 0
            def forward(self, model, batch, step=0):
                TermAt.calls += 1
                if TermAt.calls == 3:
                    os.kill(os.getpid(), signal.SIGTERM)   # as a cluster scheduler would, mid-step
                return super().forward(model, batch, step=step)

        cfg = apply_overrides(TrainConfig(), ["out_dir={tmp_path}", "max_steps=1000", "data.batch_size=4",
            "data.num_workers=0", "sample.num_images=0", "export_ema=false"])
        trainer = Trainer(cfg, model=tiny_jit(), objective=TermAt(), dataset=RandomImages(n=12), progress=False)
        print(json.dumps({{"stopped": trainer.fit().stopped}}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"stopped": "interrupted"}
    assert load_training_checkpoint(tmp_path)["step"] == 3  # the step in progress finished, then it stopped


def test_a_truncated_checkpoint_is_reported_clearly(tmp_path):
    run(small_config(tmp_path, "max_steps=1"))
    latest = tmp_path / "checkpoints" / "latest.pt"
    latest.write_bytes(latest.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_training_checkpoint(tmp_path)


# -- stage transitions -------------------------------------------------------------------------------------
def test_init_from_copies_weights_and_ema_with_a_fresh_optimizer(tmp_path):
    first, _ = run(small_config(tmp_path / "stage1", "max_steps=3"))
    cfg = small_config(
        tmp_path / "stage2",
        "max_steps=0",
        f"init_from={tmp_path / 'stage1' / 'checkpoints' / 'latest.pt'}",
        "optim.lr=5e-5",
        "optim.betas=[0.9, 0.95]",
    )
    second = Trainer(cfg, model=tiny_jit(), objective=SeededFlowMatching(), dataset=RandomImages(), progress=False)
    assert second.step == 0 and not second.optimizer.state
    assert all(g["lr"] == 5e-5 and g["betas"] == (0.9, 0.95) for g in second.optimizer.param_groups)
    assert_states_equal(second.model.state_dict(), first.model.state_dict())
    assert_states_equal(second.ema.state_dict(), first.ema.state_dict())
    second.close()


def test_init_from_applies_on_a_stage_first_launch_with_resume_auto(tmp_path):
    """resume="auto" with no checkpoint of its own yet must still start from init_from (then resume later)."""
    first, _ = run(small_config(tmp_path / "stage1", "max_steps=2"))
    cfg = small_config(tmp_path / "stage2", "max_steps=0", f"init_from={tmp_path / 'stage1'}")
    second = Trainer(
        cfg, model=tiny_jit(), objective=SeededFlowMatching(), dataset=RandomImages(), resume="auto", progress=False
    )
    assert second.step == 0
    assert_states_equal(second.ema.state_dict(), first.ema.state_dict())
    second.close()


def test_init_from_a_different_resolution_regenerates_pos_embed(tmp_path):
    run(small_config(tmp_path / "s256", "max_steps=1"))
    cfg = small_config(tmp_path / "s512", "max_steps=0", f"init_from={tmp_path / 's256'}")
    big = tiny_jit(size=32)
    trainer = Trainer(cfg, model=big, objective=SeededFlowMatching(), dataset=RandomImages(size=32), progress=False)
    state = load_training_checkpoint(tmp_path / "s256")
    assert trainer.model.pos_embed.shape[1] == 64 and state["model"]["pos_embed"].shape[1] == 16
    torch.testing.assert_close(trainer.model.blocks[0].attn.qkv.weight, state["model"]["blocks.0.attn.qkv.weight"])
    trainer.close()


# -- precision, clipping, warm-up -------------------------------------------------------------------------
def test_bf16_autocast_on_cpu_keeps_fp32_master_weights(tmp_path):
    trainer = Trainer(
        small_config(tmp_path, "max_steps=2", "precision=bf16"),
        model=tiny_jit(),
        objective=SeededFlowMatching(),
        dataset=RandomImages(n=12),
        progress=False,
    )
    computed_in = []
    trainer.model.final_layer.linear.register_forward_hook(lambda m, i, out: computed_in.append(out.dtype))
    result = trainer.fit()
    trainer.close()
    assert computed_in == [torch.bfloat16] * 2 and result.last_loss is not None  # the forward ran under bf16 autocast
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert all(p.dtype == torch.float32 for p in trainer.ema.model.parameters())
    assert all(s["exp_avg"].dtype == torch.float32 for s in trainer.optimizer.state.values())


def test_warmup_is_linear_and_clipping_reports_the_gradient_norm(tmp_path):
    run(small_config(tmp_path, "max_steps=5", "optim.warmup_steps=4", "optim.lr=1e-3", "optim.grad_clip=1.0"))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert [r["lr"] for r in rows] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])
    assert all(r["grad_norm"] > 0 for r in rows)


def test_clipping_bounds_the_gradient_norm(tmp_path):
    trainer = Trainer(
        small_config(tmp_path, "optim.grad_clip=1e-3"),
        model=tiny_jit(),
        objective=SeededFlowMatching(),
        dataset=RandomImages(n=12),
        progress=False,
    )
    applied, values, _ = trainer.optimizer_step(trainer.batches())
    trainer.close()
    assert applied and values["grad_norm"] > 1e-3  # the norm before clipping is reported ...
    params = [p for g in trainer.optimizer.param_groups for p in g["params"] if p.grad is not None]
    clipped = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    assert clipped == pytest.approx(1e-3, rel=1e-3)  # ... and the gradients the optimiser used had norm 1e-3


# -- logs --------------------------------------------------------------------------------------------------
def test_logs_config_and_loss_curve_are_written(tmp_path):
    run(small_config(tmp_path, "max_steps=4"))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "event" not in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert {"loss", "fm_loss", "lr", "images_per_s"} <= set(steps[0])
    assert json.loads((tmp_path / "config.json").read_text())["max_steps"] == 4
    from PIL import Image

    assert Image.open(tmp_path / "loss_curve.png").size == (640, 360)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))  # TensorBoard is installed here
