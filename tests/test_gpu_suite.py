"""benchmarks/gpu_suite.py runs on CPU with tiny sizes through the same code paths as on the GPU, and writes the
JSON / markdown the GPU run will be read from. No timing is asserted, only that every figure is there and
consistent with the FLOP counts."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
import torch

import pixelgen.nn.attention_backends as attention_module
from pixelgen import build_model
from pixelgen.utils.flops import jit_flops, training_step_flops

SUITE_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_suite"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_suite", None)


@pytest.fixture
def failing_xformers(monkeypatch):
    """An installed xformers whose memory_efficient_attention finds no operator (the GPU machine's case)."""

    def memory_efficient_attention(q, k, v, p=0.0):
        raise NotImplementedError("No operator found for `memory_efficient_attention_forward` with inputs: ...")

    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = memory_efficient_attention
    package = types.ModuleType("xformers")
    package.ops, package.__version__, package.__file__ = ops, "0.0.35", "/nonexistent/xformers/__init__.py"
    monkeypatch.setitem(sys.modules, "xformers", package)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    for name, value in (("_xformers_ops", None), ("_xformers_disabled", None), ("_logged", set())):
        monkeypatch.setattr(attention_module, name, value)


def _rows(report, section):
    return {row["name"]: row for row in report["results"] if row["section"] == section}


def test_tiny_suite_writes_every_section(suite, tmp_path, failing_xformers):
    report = suite.main(
        ["--out", str(tmp_path), "--tiny", "--device", "cpu", "--peak-tflops", "1", "--steps", "1", "--warmup", "1"]
        + ["--budget-s", "1e9"]  # a loaded machine must not skip sections: this test checks that all are written
    )
    saved = json.loads((tmp_path / "suite.json").read_text())
    assert saved["results"] == json.loads(json.dumps(report["results"], default=str))
    assert "errors" not in saved and not saved["skipped"]
    assert set(saved["elapsed_s"]) == {"env", "correctness", "attention", "train", "sample", "total"}

    meta = saved["meta"]
    assert meta["tiny"] and meta["peak_tflops"] == 1.0
    assert "random weights" in meta["weights_note"] and "multiply-add = 2 FLOPs" in meta["flops_note"]

    env = saved["env"]
    assert env["torch"] == torch.__version__ and env["sdpa_kernels"]["math"] == "ok"
    xformers = env["xformers"]
    assert xformers["status"].startswith("memory_efficient_attention failed: NotImplementedError: No operator found")
    assert xformers["extension_loaded"] is None  # the fake has no C++ extension at all
    assert (tmp_path / "xformers_info.txt").exists()

    correctness = saved["correctness"]
    for label in ("bf16", "bf16_frozen_bf16_nhwc"):
        terms = correctness["loss_terms"][label]
        assert set(terms["rel_err"]) == {"flow_matching", "repa", "lpips", "pdino", "loss"} and terms["ok"]
    for setting in ("unguided", "guided"):
        assert correctness["sampler"][setting]["ok"] and correctness["sampler"][setting]["max_uint8_diff"] <= 255
    assert correctness["attention"]["math"]["ok"]
    assert "No operator found" in correctness["attention"]["xformers"]["unavailable"]

    attention = _rows(saved, "attention")
    assert attention["attention sdpa math"]["mfu"] is not None and attention["attention sdpa math"]["fwd_bwd_ms"] > 0
    assert "No operator found" in attention["attention xformers"]["error"]

    train = _rows(saved, "train")
    assert set(train) == {"train full (eager)", "train FM+REPA (eager)", "train full, frozen bf16 + LPIPS NHWC (eager)"}
    for row in train.values():
        assert row["ms"] > 0 and row["images_per_s"] > 0 and row["batch"] == 4 and "mfu" in row
        assert row["original"] is None and row["speedup"] is None  # tiny sizes are not compared with the paper's
        assert set(row["first_step_values"]) >= {"flow_matching", "repa", "loss"}
    fm = train["train FM+REPA (eager)"]
    config = build_model("jit", **suite.TINY.model_overrides, device="meta").config
    dims = (24, 2, 2)
    expected = training_step_flops(config, batch=4, perceptual=False, dinov2_dims=dims)["total"].total / 4
    assert fm["flops_per_image"] == pytest.approx(expected)
    assert fm["mfu"] == pytest.approx(fm["flops_per_image"] * fm["images_per_s"] / 1e12)
    assert train["train full (eager)"]["flops_per_image"] is None  # the tiny SqueezeNet LPIPS has no analytic count

    sample = _rows(saved, "sample")
    assert set(sample) == {f"sample Heun-3 {s} ({v})" for s in ("unguided", "guided") for v in ("eager", "cuda graphs")}
    per_row = jit_flops(config).forward
    for _name, row in sample.items():
        assert row["flops_per_image"] == pytest.approx(row["rows_per_image"] * per_row)
        assert row["rel_err_vs_eager"] == 0.0  # CPU: the graph wrapper is a plain call
    assert sample["sample Heun-3 unguided (eager)"]["rows_per_image"] == 5  # 2·3 − 1 evaluations, one row each
    assert sample["sample Heun-3 guided (eager)"]["rows_per_image"] > 5

    markdown = (tmp_path / "suite.md").read_text()
    assert (
        "| what | ms | images/s |" in markdown and "train FM+REPA (eager)" in markdown and "## Correctness" in markdown
    )
    profiles = (tmp_path / "profiles.txt").read_text()
    assert "== train_eager" in profiles and "== sample_eager" in profiles


def test_compiled_variants_and_budget(suite, tmp_path):
    report = suite.main(
        [
            "--out",
            str(tmp_path),
            "--tiny",
            "--device",
            "cpu",
            "--sections",
            "sample",
            "--compile",
            "on",
            "--compile-backend",
            "eager",
            "--sample-variants",
            "eager,compiled",
            "--no-profile",
        ]
    )
    names = [row["name"] for row in report["results"]]
    assert names == [f"sample Heun-3 {s} ({v})" for v in ("eager", "compiled") for s in ("unguided", "guided")]
    assert all(row["ok_vs_eager"] for row in report["results"])
    skipped = suite.main(["--out", str(tmp_path), "--tiny", "--device", "cpu", "--budget-s", "0"])
    assert len(skipped["skipped"]) == len(suite.SECTIONS) and not skipped["results"]


def test_unknown_section_is_refused(suite):
    with pytest.raises(SystemExit):
        suite.main(["--sections", "env,warp"])


def test_training_rows_time_the_trainers_own_step(suite, tmp_path, monkeypatch):
    from pixelgen.train import Trainer

    calls = []
    real_step = Trainer.optimizer_step

    def counting_step(self, batches):
        calls.append(self)
        return real_step(self, batches)

    monkeypatch.setattr(Trainer, "optimizer_step", counting_step)
    report = suite.main(
        ["--out", str(tmp_path), "--tiny", "--device", "cpu", "--sections", "train", "--steps", "2", "--warmup", "1"]
        + ["--no-profile"]
    )
    rows = [row for row in report["results"] if row["section"] == "train"]
    assert len(rows) == 3 and not any("error" in row for row in rows)
    assert len(calls) == 3 * (1 + 2)  # warm-up + timed steps of each variant, all through Trainer.optimizer_step
    assert len({id(trainer) for trainer in calls}) == 3  # one Trainer per variant
