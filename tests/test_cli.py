"""The ``pixelgen`` command line: exit codes and one-sentence errors for every subcommand, ``--threads``, typed
config validation, cross-section start-up checks, config replay, missing extras, and ``pixelgen train --data``
on a folder of images end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import pixelgen
from pixelgen.cli import COMMANDS, main
from pixelgen.cli.common import _cgroup_cpu_limit, available_cpus, default_threads, run_guarded
from pixelgen.train.config import TrainConfig, apply_overrides, load_config_file
from pixelgen.utils.extras import MissingExtraError, require_extra
from pixelgen.utils.typecheck import TypeCheckError, check_type


def run_cli(argv: list[str]) -> int:
    """``pixelgen ARGV`` in-process; argparse's own errors exit through SystemExit."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def one_sentence(err: str, prog: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line and not line.startswith(("INFO", "WARNING", "DEBUG"))]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: "), err
    return lines[0]


# -- exit codes and messages -------------------------------------------------------------------------------
BAD_OPTIONS = {
    "train": [
        (["--steps", "0"], "expected a positive integer"),
        (["--preset", "pixelgen_xll", "--print-config"], "did you mean 'pixelgen_xl'"),
        (["--demo", "--set", "max_steps=1.5", "--print-config"], "max_steps must be an integer, got 1.5"),
        (["--demo", "--set", "optim.betas=[0.9]", "--print-config"], "optim.betas must be a list of 2 numbers"),
        (["--demo", "--set", "compile=no", "--print-config"], "compile must be a boolean"),
        (["--demo", "--set", "optim.lr=fast", "--print-config"], "optim.lr must be a number, got the string 'fast'"),
        (["--demo", "--set", "data.batch_size=true", "--print-config"], "must be an integer, got the boolean true"),
        (["--demo", "--set", "optim.lrr=1", "--print-config"], "did you mean 'optim.lr'"),
        (["--demo", "--set", "max_steps", "--print-config"], "must look like key=value"),
        (["--demo", "--preset", "demo"], "not --preset and --demo"),
        (["--config", "/no/such/config.json"], "does not exist"),
    ],
    "sample": [
        (["--checkpoint", "c", "--out", "o", "--per-class", "0"], "expected a positive integer, got '0'"),
        (["--checkpoint", "c", "--out", "o", "--steps", "x"], "expected an integer, got 'x'"),
        (["--checkpoint", "c", "--out", "o", "--guidance", "nan"], "expected a finite number"),
        (["--checkpoint", "/no/such/ckpt", "--out", "o", "--device", "cpu"], "is neither a folder"),
    ],
    "eval": [(["s.npz", "--ref", "r.npz", "--batch-size", "-1"], "expected a positive integer")],
    "generate": [
        (["--checkpoint", "c", "--prompt", "a", "--num", "0"], "expected a positive integer"),
        (["--checkpoint", "/no/such/ckpt", "--prompt", "a"], "does not exist"),
    ],
    "convert": [(["/no/such.ckpt", "out"], "")],
    "list": [(["backbones"], "invalid choice")],
    "ema": [(["reconstruct", "run", "--sigma-rel", "0.1", "--out", "o", "--step", "-3"], "expected an integer >= 0")],
    "sweep": [(["x", "--ref", "r", "--out", "o", "--guidance", "1", "--num", "0"], "expected a positive integer")],
    "app": [(["--checkpoint", "/no/such/ckpt"], "does not exist")],
}
CASES = [(command, args, message) for command, cases in BAD_OPTIONS.items() for args, message in cases]


def test_every_command_has_bad_option_cases():
    assert set(BAD_OPTIONS) == set(COMMANDS)


@pytest.mark.parametrize("command, args, message", CASES, ids=[f"{c}-{' '.join(a)[:40]}" for c, a, _ in CASES])
def test_a_user_error_is_one_sentence_and_exit_code_2(capsys, tmp_path, monkeypatch, command, args, message):
    monkeypatch.chdir(tmp_path)
    assert run_cli([command, *args]) == 2
    prog = "pixelgen ema reconstruct" if command == "ema" else f"pixelgen {command}"
    assert message in one_sentence(capsys.readouterr().err, prog)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_threads_is_an_option_of_every_command(capsys, command):
    assert run_cli([command, "--threads", "0"]) == 2
    assert "--threads: expected a positive integer" in one_sentence(capsys.readouterr().err, f"pixelgen {command}")
    assert run_cli([command, "--help"]) == 0
    assert "--threads" in capsys.readouterr().out


def test_threads_are_applied_before_the_command_runs(capsys):
    before = torch.get_num_threads()
    try:
        assert main(["list", "sampler", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_no_command_prints_help_and_an_unknown_one_is_a_usage_error(capsys):
    assert run_cli([]) == 0
    assert "COMMAND" in capsys.readouterr().out
    assert run_cli(["trian"]) == 2


def test_internal_errors_keep_the_traceback_and_interrupts_exit_130(capsys):
    def bug():
        raise AttributeError("a bug")

    assert run_guarded("pixelgen x", bug) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "AttributeError: a bug" in err and "bug to report" in err

    def interrupted():
        raise KeyboardInterrupt

    assert run_guarded("pixelgen x", interrupted) == 130
    assert capsys.readouterr().err == "pixelgen x: interrupted\n"

    def user():
        raise FileNotFoundError("The file f does not exist.")

    assert run_guarded("pixelgen x", user) == 2
    assert capsys.readouterr().err == "pixelgen x: error: The file f does not exist.\n"


# -- threads ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected", [("150000 100000\n", 2), ("max 100000\n", None), ("50000 100000", 1), ("garbage", None)]
)
def test_cgroup_quota(tmp_path, text, expected):
    path = tmp_path / "cpu.max"
    path.write_text(text)
    assert _cgroup_cpu_limit(str(path)) == expected
    assert _cgroup_cpu_limit(str(tmp_path / "missing")) is None


def test_default_threads_respect_affinity_quota_and_omp(monkeypatch, tmp_path):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr("pixelgen.cli.common._cgroup_cpu_limit", lambda: 2)
    assert available_cpus() == 2
    monkeypatch.setattr("pixelgen.cli.common._cgroup_cpu_limit", lambda: None)
    assert available_cpus() == 4
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_threads() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun processes on this machine share the CPUs
    assert default_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3


# -- typed validation --------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.one_of(st.booleans(), st.text(max_size=5), st.floats(allow_nan=True).filter(lambda f: not f.is_integer())))
def test_integer_fields_refuse_booleans_strings_and_fractions(value):
    with pytest.raises(TypeCheckError, match="max_steps must be an integer"):
        apply_overrides(TrainConfig(), [f"max_steps={json.dumps(value) if not isinstance(value, float) else value}"])


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=10**9))
def test_whole_numbers_are_integers_wherever_written(value):
    assert apply_overrides(TrainConfig(), [f"max_steps={value}"]).max_steps == value
    assert apply_overrides(TrainConfig(), [f"max_steps={float(value)}"]).max_steps == value


@pytest.mark.parametrize(
    "value, hint, message",
    [
        (True, int, "must be an integer, got the boolean true"),
        ("no", bool, "must be a boolean (true or false), got the string 'no'"),
        ("3", float, "must be a number, got the string '3'"),
        ([0.9], tuple[float, float], "must be a list of 2 numbers, got [0.9] (1 item)"),
        (3, str | None, "must be a string or null, got 3"),
        ("fast", int | None, "must be an integer or null, got the string 'fast'"),
    ],
)
def test_type_messages(value, hint, message):
    with pytest.raises(TypeCheckError) as info:
        check_type(value, hint, "x")
    assert str(info.value) == f"x {message}."


def test_config_constructor_and_files_are_checked_too(tmp_path):
    with pytest.raises(TypeCheckError, match="max_steps must be an integer, got the boolean true"):
        TrainConfig(max_steps=True)
    (tmp_path / "c.json").write_text(json.dumps({"optim": {"betas": [0.9, 0.95, 0.99]}}))
    with pytest.raises(TypeCheckError, match=r"optim.betas must be a list of 2 numbers, got \[0.9, 0.95, 0.99\]"):
        load_config_file(tmp_path / "c.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_config_file(tmp_path / "bad.json")
    assert TrainConfig.from_dict({"optim": {"betas": [0.5, 0.6]}}).optim.betas == (0.5, 0.6)
    for bad in ("optim.lr=nan", "optim.lr=-1", "ema_decay=1.5", "optim.betas=[0.9,1.0]"):
        with pytest.raises(ValueError):
            apply_overrides(TrainConfig(), [bad])


def test_registry_keywords_are_checked_by_name_and_type():
    with pytest.raises(TypeError, match="loss 'repa' has no parameter 'hiden_size'; did you mean 'hidden_size'"):
        pixelgen.build_loss("repa", hiden_size=8)
    with pytest.raises(TypeError, match="dataset 'demo': resolution must be an integer, got 32.5"):
        pixelgen.build_dataset("demo", resolution=32.5)
    with pytest.raises(KeyError, match="Unknown objective_preset 'pixelgn'; did you mean 'pixelgen'"):
        pixelgen.build_objective("pixelgn")


def test_front_door_covers_every_kind():
    for kind, (build, lister, register) in {
        "backbone": ("build_model", "list_models", "register_model"),
        "sampler": ("build_sampler", "list_samplers", "register_sampler"),
        "loss": ("build_loss", "list_losses", "register_loss"),
        "objective_preset": ("build_objective", "list_objective_presets", "register_objective_preset"),
        "sampling_preset": ("build_sampling_preset", "list_sampling_presets", "register_sampling_preset"),
        "train_preset": ("build_train_preset", "list_train_presets", "register_train_preset"),
        "encoder": ("build_encoder", "list_encoders", "register_encoder"),
        "conditioner": ("build_conditioner", "list_conditioners", "register_conditioner"),
        "dataset": ("build_dataset", "list_datasets", "register_dataset"),
    }.items():
        assert callable(getattr(pixelgen, build)) and callable(getattr(pixelgen, register)), kind
        assert getattr(pixelgen, lister)() == pixelgen.registries[kind].list(), kind
    assert pixelgen.from_pretrained is pixelgen.load_pretrained
    assert pixelgen.build_sampling_preset("xl_cfg")["params"]["guidance"] == 2.25
    assert {"small_32", "small_64", "imagenet64", "t2i_demo", "+lpips+pdino"} <= set(pixelgen.list_train_presets())


# -- missing extras ---------------------------------------------------------------------------------------------
def test_require_extra_names_the_pip_command(monkeypatch, capsys, tmp_path):
    with pytest.raises(MissingExtraError, match=r"pip install 'pixelgen\[t2i\]'"):
        require_extra("pixelgen_no_such_module", "t2i")
    assert require_extra("json", "t2i") is json
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if gradio were not installed
    folder = tmp_path / "model"
    pixelgen.save_pretrained(
        pixelgen.build_model("jit", input_size=16, patch_size=8, hidden_size=32, depth=1, num_heads=2, num_classes=2),
        folder,
    )
    assert run_cli(["app", "--checkpoint", str(folder)]) == 2
    assert "pip install 'pixelgen[app]'" in one_sentence(capsys.readouterr().err, "pixelgen app")


def test_a_broken_module_is_not_called_missing(tmp_path, monkeypatch):
    (tmp_path / "broken_pkg_for_test.py").write_text("import pixelgen_absent_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as info:
        require_extra("broken_pkg_for_test", "eval")
    assert not isinstance(info.value, MissingExtraError)


# -- pixelgen train on your own images ------------------------------------------------------------------------
def image_folder(root: Path, classes: list[str] | None, per_class: int = 4, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes or [None]):
        folder = root / name if name else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.full((size, size, 3), 60 * c, np.uint8) + rng.integers(0, 40, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


TINY = [
    "--set", "model.overrides.hidden_size=32", "--set", "model.overrides.depth=2", "--set",
    "model.overrides.num_heads=2", "--set", "model.overrides.bottleneck_dim=16", "--set",
    "model.overrides.in_context_start=1", "--set", "objective.overrides.align_layer=1", "--set",
    "sample.num_images=4", "--set", "sample.params.num_steps=2", "--set", "data.num_workers=0", "--set",
    "device=cpu", "--set", "precision=fp32", "--no-progress",
]  # fmt: skip


def printed(capsys, argv) -> dict:
    assert run_cli(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_train_on_class_folders_end_to_end(tmp_path, capsys, monkeypatch):
    data = image_folder(tmp_path / "pets", ["cats", "dogs"])
    captions = []
    import pixelgen.train.trainer as trainer_module

    original = trainer_module.save_image_grid

    def recording(images, path, **kw):
        captions.append(kw.get("captions"))
        return original(images, path, **kw)

    monkeypatch.setattr(trainer_module, "save_image_grid", recording)
    out = tmp_path / "run"
    argv = ["train", "--data", str(data), "--steps", "2", "--batch-size", "4", "--out", str(out), *TINY]
    summary = printed(capsys, argv)
    assert summary["step"] == 2 and summary["stopped"] == "max_steps"
    assert captions == [["cats", "dogs", "cats", "dogs"]]  # the grid is captioned with the class names
    config = json.loads((out / "config.json").read_text())
    assert config["name"] == "small_32" and config["data"]["resolution"] == 32  # 40-px images: the 32-px preset
    assert config["data"]["class_names"] == ["cats", "dogs"] and config["model"]["overrides"]["num_classes"] == 2
    exported = json.loads((out / "export" / "config.json").read_text())
    assert exported["class_names"] == ["cats", "dogs"] and exported["config"]["num_classes"] == 2
    assert (out / "samples" / "step_0000002.png").is_file()

    # Replay: the run's config.json gives the same configuration (a new folder), --set on top.
    replay = printed(capsys, ["train", "--config", str(out / "config.json"), "--out", str(tmp_path / "r"),
                              "--set", "max_steps=3", "--print-config"])  # fmt: skip
    assert {**replay, "out_dir": config["out_dir"], "max_steps": 2} == config
    # YAML works the same.
    pytest.importorskip("yaml")
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert printed(capsys, ["train", "--config", str(tmp_path / "c.yaml"), "--print-config"]) == config


def test_data_sets_classes_resolution_and_overrides(tmp_path, capsys):
    data = image_folder(tmp_path / "shapes", ["circle", "square", "star"], size=72)
    cfg = printed(capsys, ["train", "--data", str(data), "--print-config"])
    assert (
        cfg["name"] == "small_64" and cfg["data"]["resolution"] == 64 and cfg["model"]["overrides"]["patch_size"] == 8
    )
    assert cfg["model"]["overrides"]["num_classes"] == 3 and cfg["sample"]["labels"][:4] == [0, 1, 2, 0]
    cfg = printed(capsys, ["train", "--data", str(data), "--resolution", "48", "--steps", "9", "--batch-size", "3",
                           "--model", "jit_b_16", "--print-config"])  # fmt: skip
    assert (cfg["data"]["resolution"], cfg["model"]["overrides"]["input_size"], cfg["max_steps"]) == (48, 48, 9)
    assert cfg["data"]["batch_size"] == 3 and cfg["model"]["name"] == "jit_b_16"
    # --demo --data DIR trains the demo model on the folder (it used to fail on an unexpected 'root').
    cfg = printed(capsys, ["train", "--demo", "--data", str(data), "--print-config"])
    assert cfg["data"]["dataset"] == "imagenet" and cfg["data"]["root"] == str(data) and cfg["data"]["options"] == {}
    assert cfg["data"]["class_names"] == ["circle", "square", "star"] and cfg["model"]["overrides"]["num_classes"] == 3
    flat = image_folder(tmp_path / "faces", None)
    cfg = printed(capsys, ["train", "--data", str(flat), "--print-config"])
    assert cfg["data"]["dataset"] == "image_folder_flat" and cfg["data"]["class_names"] == ["faces"]
    assert cfg["model"]["overrides"]["num_classes"] == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(["train", "--data", str(empty)]) == 2
    assert "holds no images" in one_sentence(capsys.readouterr().err, "pixelgen train")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--set", "model.overrides.num_classes=1"], "The data has 2 classes but the model has only 1"),
        (["--set", "objective.overrides.align_layer=5"], "align_layer is 5 but the model has 2 blocks"),
        (["--set", "model.overrides.patch_size=8"], "DINOv2 encoder is set for patch size 4"),
        (["--set", "data.resolution=64"], "data.resolution is 64 but the model"),
        (["--set", 'model.overrides.use_bottleneck="no"'], "use_bottleneck"),
    ],
)
def test_cross_section_checks_at_start_up(tmp_path, capsys, overrides, message):
    data = image_folder(tmp_path / "pets", ["cats", "dogs"], per_class=1)
    out = tmp_path / "run"
    argv = ["train", "--data", str(data), "--steps", "1", "--out", str(out), *TINY, *overrides]
    assert run_cli(argv) == 2
    assert message in one_sentence(capsys.readouterr().err, "pixelgen train")
    assert not (out / "checkpoints").exists()  # refused before any step


def test_pipeline_returns_pil_images():
    from pixelgen.conditioners import build_tiny_qwen3
    from pixelgen.conditioners.pipeline import TextToImagePipeline

    torch.manual_seed(0)
    model = pixelgen.build_model(
        "jit_t2i", input_size=16, patch_size=4, hidden_size=32, num_groups=2, num_blocks=1, num_text_blocks=1,
        txt_embed_dim=64, txt_max_length=128, bottleneck_dim=16,
    )  # fmt: skip
    pipe = TextToImagePipeline(model, build_tiny_qwen3(), device="cpu")
    tensors = pipe(["a cat", "a dog"], num_steps=2).images
    images = pipe(["a cat", "a dog"], num_steps=2, output_type="pil").images
    assert [im.size for im in images] == [(16, 16), (16, 16)] and all(im.mode == "RGB" for im in images)
    assert all(np.array_equal(np.asarray(im), t.permute(1, 2, 0).numpy()) for im, t in zip(images, tensors))
    with pytest.raises(ValueError, match="output_type must be 'pt' or 'pil'"):
        pipe(["a cat"], num_steps=2, output_type="np")
