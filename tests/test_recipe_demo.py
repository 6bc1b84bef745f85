"""The ImageNet-256 recipe: presets, overrides, data-folder errors, and the --demo run end to end (few steps)."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch

import pixelgen
from pixelgen.train import load_training_checkpoint, read_metrics

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "imagenet256.py"


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("imagenet256_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resolved(recipe, capsys, *args) -> dict:
    assert recipe.main([*args, "--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


def test_default_preset_is_the_papers_xl_run(recipe, capsys):
    cfg = resolved(recipe, capsys)
    assert cfg["model"]["name"] == "pixelgen_xl_16" and cfg["objective"]["preset"] == "pixelgen"
    assert cfg["max_steps"] == 800_000 and cfg["seed"] == 1234 and cfg["data"]["batch_size"] == 32
    o = cfg["optim"]
    assert (o["lr"], tuple(o["betas"]), o["eps"], o["weight_decay"], o["warmup_steps"], o["grad_clip"]) == (
        1e-4,
        (0.9, 0.999),
        1e-8,
        0.0,
        0,
        None,
    )
    assert cfg["ema_decay"] == 0.9999 and cfg["data"]["flip"] is False and cfg["data"]["resolution"] == 256
    s = cfg["sample"]
    assert s["sampler"] == "heun" and s["params"] == {
        "num_steps": 50,
        "timeshift": 2.0,
        "guidance": 2.25,
        "guidance_interval_min": 0.1,
        "guidance_interval_max": 0.9,
        "exact_henu": True,
    }


@pytest.mark.parametrize(
    "preset, model, objective",
    [
        ("pixelgen_l", "pixelgen_l_16", "pixelgen"),
        ("jit_l_baseline", "jit_l_16", "jit_repa"),
        ("jit_repa", "pixelgen_l_16", "jit_repa"),
        ("+lpips", "pixelgen_l_16", "jit_repa_lpips"),
        ("+lpips+pdino", "pixelgen_l_16", "jit_repa_lpips_pdino"),
    ],
)
def test_l16_presets_and_the_ablation_ladder(recipe, capsys, preset, model, objective):
    cfg = resolved(recipe, capsys, "--preset", preset)
    assert (cfg["model"]["name"], cfg["objective"]["preset"], cfg["max_steps"]) == (model, objective, 200_000)
    assert cfg["sample"]["sampler"] == "euler" and cfg["sample"]["params"]["guidance"] == 1.0
    # Every preset names parts that exist.
    assert model in pixelgen.list_models()
    assert pixelgen.losses.PRESET_ALIASES.get(objective, objective) in pixelgen.losses.PRESETS


def test_overrides_and_run_flags(recipe, capsys, tmp_path):
    cfg = resolved(
        recipe,
        capsys,
        "--preset",
        "pixelgen_l",
        "--set",
        "optim.lr=2e-4",
        "--set",
        "data.batch_size=16",
        "--set",
        "model.overrides.proj_drop=0.0",
        "--out",
        str(tmp_path),
        "--data",
        str(tmp_path),
    )
    assert (
        cfg["optim"]["lr"] == 2e-4
        and cfg["data"]["batch_size"] == 16
        and cfg["model"]["overrides"] == {"proj_drop": 0.0}
    )
    assert cfg["out_dir"] == str(tmp_path) and cfg["data"]["root"] == str(tmp_path)


def test_unknown_override_is_one_sentence(recipe, capsys):
    assert recipe.main(["--set", "optim.learning_rate=1", "--print-config"]) == 2
    assert "Unknown config key 'optim.learning_rate'" in capsys.readouterr().err


def _flat_folder(p: Path) -> Path:
    (p / "flat").mkdir()
    (p / "flat" / "a.jpg").write_bytes(b"x")
    return p / "flat"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "No training data given"),
        (lambda p: p / "missing", "does not exist"),
        (_flat_folder, "no class folders"),
    ],
)
def test_missing_or_malformed_imagenet_folder_is_reported(recipe, capsys, tmp_path, make, message):
    root = make(tmp_path)
    args = ["--out", str(tmp_path / "run")] + (["--data", str(root)] if root is not None else [])
    assert recipe.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("imagenet256.py: error: ") and message in err
    assert not (tmp_path / "run" / "checkpoints").exists()


FAST = [
    "--set",
    "max_steps=6",
    "--set",
    "data.batch_size=8",
    "--set",
    "sample.params.num_steps=2",
    "--set",
    "sample.num_images=4",
    "--set",
    "log_every=2",
    "--set",
    "ckpt_every=4",
]


@pytest.fixture
def quick_recognition(monkeypatch):
    """The closing recognition figure with a few samples and classifier steps (the real demo: 20 and 300)."""
    import pixelgen.eval.recognition as recognition

    monkeypatch.setattr(recognition, "DEMO_PER_CLASS", 1)
    monkeypatch.setattr(recognition, "DEMO_CLASSIFIER_STEPS", 5)


def test_demo_runs_end_to_end_and_leaves_its_outputs(recipe, capsys, caplog, tmp_path, quick_recognition):
    out = tmp_path / "demo"
    with caplog.at_level(logging.WARNING, logger="pixelgen.recipe"):
        assert recipe.main(["--demo", "--out", str(out), *FAST]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["step"] == 6 and summary["stopped"] == "max_steps"
    # Plain flow matching: no frozen encoders, so no random-weight stand-ins either.
    assert "RANDOM" not in caplog.text
    config = json.loads((out / "config.json").read_text())
    assert config["objective"]["overrides"]["losses"] == ["flow_matching"]
    assert "encoders" not in config["objective"]["overrides"]

    # The closing figure: printed, in the summary and in the run folder.
    recognition = json.loads((out / "recognition.json").read_text())
    assert recognition["samples"] == 10 and set(recognition["per_class"]) >= {"cat", "coins"}
    assert summary["recognised"] == recognition["recognised"] and 0.0 <= summary["recognised"] <= 1.0
    assert "Recognised" in captured.err and "of 10 class-conditional samples" in captured.err

    state = load_training_checkpoint(out)
    assert state["step"] == 6 and state["config"]["name"] == "demo"
    assert (out / "samples" / "step_0000006.png").is_file()
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4, 6] and all(r["loss"] > 0 for r in rows)
    assert (out / "loss_curve.png").is_file()

    # The exported EMA weights load with pixelgen.load_pretrained and equal the checkpoint's EMA.
    model = pixelgen.load_pretrained(out / "export")
    for key, value in state["ema"].items():
        assert torch.equal(model.state_dict()[key], value), key

    # --resume continues the same run.
    assert recipe.main(["--demo", "--out", str(out), *FAST, "--set", "max_steps=8", "--resume"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 8
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")][-1] == 8


def test_demo_with_the_pixelgen_objective_falls_back_to_random_encoders(recipe, capsys, tmp_path, quick_recognition):
    out = tmp_path / "demo"
    assert recipe.main(["--preset", "demo_pixelgen", "--out", str(out), *FAST, "--set", "max_steps=2"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 2
    # Offline test machine: both frozen encoders fell back to random weights.
    encoders = json.loads((out / "config.json").read_text())["objective"]["overrides"]["encoders"]
    assert encoders["dinov2"]["weights"] == "random" and encoders["lpips"]["weights"] == "random"
    assert {"repa", "lpips", "pdino"} <= set(read_metrics(out / "metrics.jsonl")[-1])
    assert (out / "recognition.json").is_file()
