"""Text-to-image training through ``pixelgen train``: the stage presets, the CPU demo (three stages), stage
transitions, resume, every option of the T2I recipe, and SIGTERM stopping the run cleanly."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from pixelgen.backbones import build_model
from pixelgen.cli import main as cli_main
from pixelgen.conditioners import build_tiny_qwen3
from pixelgen.train import load_training_checkpoint, train
from pixelgen.train.presets import NEEDS_INIT, T2I_STAGES, build_train_preset, t2i_demo_stage
from pixelgen.train.text import T2ITrainer

ROOT = Path(__file__).resolve().parents[1]
T2I_RECIPE = ROOT / "recipes" / "t2i.py"


def _recipe_main(argv):
    import importlib.util

    spec = importlib.util.spec_from_file_location("t2i_recipe_for_tests", T2I_RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        return module.main(argv)
    except SystemExit as exc:  # argparse's own errors (a bad option value) exit with 2
        return exc.code


def test_stage_presets():
    expected = {  # res, batch, accum, lr, betas, steps, dataset, grid sampler
        "pretrain256": (256, 64, 3, 2e-4, (0.9, 0.95), 200_000, "webdataset_captions", "euler"),
        "pretrain512": (512, 16, 4, 1e-4, (0.9, 0.95), 100_000, "webdataset_captions", "euler"),
        "sft512": (512, 16, 4, 1e-5, (0.9, 0.999), 60_000, "caption_folder", "adams"),
    }
    for stage, (res, batch, accum, lr, betas, steps, dataset, sampler) in expected.items():
        c = build_train_preset(stage)
        assert (c.data.resolution, c.data.batch_size, c.optim.grad_accum, c.optim.lr, c.optim.betas) == (
            res, batch, accum, lr, betas,
        )  # fmt: skip
        assert (c.max_steps, c.data.dataset, c.sample.sampler, c.optim.grad_clip, c.optim.weight_decay) == (
            steps, dataset, sampler, 1.0, 0.0,
        )  # fmt: skip
        assert c.model.name == "pixelgen_xxl_16_t2i" and c.model.overrides.get("input_size", 256) == res
        assert c.text is not None and c.text.encoder == "Qwen/Qwen3-1.7B" and len(c.text.prompts) == 8
    assert build_train_preset("sft512").sample.params == {
        "order": 2, "num_steps": 25, "guidance": 4.0, "timeshift": 3.0,
    }  # fmt: skip


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "pretrain512", "--data", "x"], "starts from a pretrain256 run"),
        (["--preset", "pretrain256"], "No training data given"),
        (["--preset", "pretrain256", "--data", "/no/such/shards"], "No shards matched"),
        (["--preset", "sft512", "--data", "/no/such/folder", "--init-from", "x"], "caption folder .* does not exist"),
        (["--demo", "--demo-scale", "0"], "expected a positive finite number"),
        (["--demo", "--demo-scale", "-1"], "expected a positive finite number"),
        (["--demo", "--prompts-file", "/no/such/prompts.txt", "--print-config"], "prompts file .* does not exist"),
        (["--demo", "--set", "max_steps=1.5", "--print-config"], "max_steps must be an integer, got 1.5"),
        (["--demo", "--set", "text.pad_mask=no", "--print-config"], "text.pad_mask must be a boolean"),
    ],
)
def test_stage_errors_are_one_sentence_before_the_text_encoder_loads(capsys, args, message):
    import re

    assert _recipe_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("t2i.py: error: ") and re.search(message, err), err
    assert "Traceback" not in err and err.count("\n") == 1


def test_demo_options_are_honoured(capsys, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n\na blue ball\n")
    assert _recipe_main([
        "--demo", "--out", str(tmp_path / "d"), "--set", "max_steps=7", "--text-encoder", "qwen3_tiny_random",
        "--prompts-file", str(prompts), "--pad-mask", "--demo-scale", "0.5", "--print-config",
    ]) == 0  # fmt: skip
    stages = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in stages] == [f"t2i_{s}" for s in T2I_STAGES]
    for s, stage in zip(stages, T2I_STAGES):
        assert s["max_steps"] == 7  # --set applies to every stage, after --demo-scale
        assert s["text"] == {"encoder": "qwen3_tiny_random", "pad_mask": True, "prompts": ["a red cube", "a blue ball"]}
        assert s["out_dir"] == str(tmp_path / "d" / stage)
    assert stages[1]["init_from"] == str(tmp_path / "d" / "pretrain256")
    assert _recipe_main(["--demo", "--demo-scale", "0.5", "--print-config"]) == 0
    assert [s["max_steps"] for s in json.loads(capsys.readouterr().out)] == [100, 30, 20]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("t2i_demo")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli_main([
            "train", "--preset", "t2i_demo", "--out", str(out), "--demo-scale", "0.01",
            "--set", "sample.params.num_steps=2", "--no-progress",
        ])  # fmt: skip
    assert code == 0
    return out, json.loads(stdout.getvalue())


def test_demo_end_to_end(demo_run, tmp_path):
    out, summary = demo_run
    for stage in T2I_STAGES:
        run = out / stage
        assert summary["stages"][f"t2i_{stage}"]["step"] == 2
        assert (run / "checkpoints" / "latest.pt").is_file()
        assert (run / "metrics.jsonl").is_file() and (run / "loss_curve.png").is_file()
        grid = Image.open(next((run / "samples").glob("step_*.png")))
        assert grid.width > 128 and grid.height > 128  # 8 images with their prompts underneath
        spec = json.loads((run / "export" / "text_encoder.json").read_text())
        assert spec["name"] == "qwen3_tiny_random" and spec["pad_mask"] is False
        config = json.loads((run / "config.json").read_text())  # config.json describes the text run too
        assert config["text"]["encoder"]["name"] == "qwen3_tiny_random" and len(config["text"]["prompts"]) == 8
    assert cli_main([
        "generate", "--checkpoint", str(out / "sft512" / "export"), "--prompt", "a photo of a cat",
        "--num", "1", "--steps", "2", "--out", str(tmp_path), "--device", "cpu",
    ]) == 0  # fmt: skip
    assert Image.open(next(tmp_path.glob("*.png"))).size == (64, 64)


def test_stage_transitions_fresh_optimiser_and_kept_ema(demo_run):
    out, _ = demo_run
    for stage, previous in NEEDS_INIT.items():
        config = t2i_demo_stage(stage, out / "transition", steps=1)
        config.init_from = str(out / previous)
        config.data.root = str(out / "sft_captions") if stage == "sft512" else None
        trainer = T2ITrainer(config, conditioner=build_tiny_qwen3(), progress=False)
        try:
            source = load_training_checkpoint(out / previous)
            assert trainer.step == 0 and not trainer.optimizer.state  # a new run with a fresh optimiser ...
            for group in trainer.optimizer.param_groups:  # ... built from this stage's own settings
                assert group["lr"] == config.optim.lr and tuple(group["betas"]) == tuple(config.optim.betas)
            assert tuple(source["optimizer"]["param_groups"][0]["betas"]) == (0.9, 0.95)
            ema, model = trainer.ema.model.state_dict(), trainer.model.state_dict()
            for name, tensor in source["ema"].items():
                if name == "pos_embed" and tensor.shape != ema[name].shape:  # 32 px → 64 px: regenerated table
                    fresh = build_model("jit_t2i", **config.model.overrides).pos_embed
                    torch.testing.assert_close(ema[name], fresh, rtol=0, atol=0)
                    continue
                torch.testing.assert_close(ema[name], tensor, rtol=0, atol=0)
                torch.testing.assert_close(model[name], source["model"][name], rtol=0, atol=0)
        finally:
            trainer.close()
    assert config.optim.lr == 5 * 1e-5 and tuple(config.optim.betas) == (0.9, 0.999)  # sft512 checked last


def test_resume_within_a_stage(demo_run):
    out, _ = demo_run
    config = t2i_demo_stage("pretrain256", out, steps=3, grid_steps=2)
    config.text.prompts = ["a photo of a cat"]
    result = train(config, resume="auto", progress=False)
    assert result.step == 3
    events = [json.loads(line) for line in (out / "pretrain256" / "metrics.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "resume" for e in events)


@pytest.mark.slow
def test_sigterm_stops_the_demo_with_a_checkpoint_and_starts_no_next_stage(tmp_path):
    """SIGTERM during stage 1: the stage stops after its current step with a checkpoint, exit code 130, no
    traceback, and stage 2 never starts."""
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(T2I_RECIPE), "--demo", "--out", str(out), "--no-progress",
         "--set", "max_steps=100000", "--set", "log_every=1", "--set", "sample.num_images=0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    metrics = out / "pretrain256" / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 300
        while not (metrics.is_file() and '"step": 1' in metrics.read_text()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the demo did not reach step 1"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    state = load_training_checkpoint(out / "pretrain256")
    assert 1 <= state["step"] < 100000
    assert not (out / "pretrain512").exists()
    assert json.loads(stdout)["stages"]["t2i_pretrain256"]["stopped"] == "interrupted"


def test_a_padding_masked_step_trains_through_the_structured_condition(tmp_path):
    """With pad_mask the trainer's batches carry {"emb", "mask"} to the device and the step is applied."""
    config = t2i_demo_stage("pretrain256", tmp_path, steps=1)
    config.text.pad_mask = True
    trainer = T2ITrainer(config, conditioner=build_tiny_qwen3(pad_mask=True), prompts=[], progress=False)
    try:
        batch = trainer._to_device(trainer.batch_transform(next(trainer.batches())))
        assert set(batch["cond"]) == set(batch["uncond"]) == {"emb", "mask"}
        assert batch["cond"]["mask"].dtype == torch.bool and batch["cond"]["mask"].device == trainer.device
        record = trainer.optimizer_step(trainer.batches())
        applied, values, problem = record
        assert applied and problem is None and all(v == v for v in values.values())
    finally:
        trainer.close()
