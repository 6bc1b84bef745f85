"""Class-balanced generation at scale: identical sets for any process count / batch size, resumable, checked."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import pixelgen
from pixelgen.eval.generation import class_balanced_labels, generate_class_samples
from pixelgen.samplers import build_sampler, generate, sampling_preset

SAMPLER = {
    "num_steps": 3,
    "guidance": 2.0,
    "guidance_interval_min": 0.1,
    "guidance_interval_max": 0.9,
    "timeshift": 2.0,
}
NUM, PER_CLASS, SHARD = 11, 3, 4  # 3 shards (4, 4, 3 images); the last class is partly filled


def tiny_class_model(num_classes: int = 4) -> torch.nn.Module:
    model = pixelgen.build_model(
        "jit",
        input_size=16,
        patch_size=4,
        in_channels=3,
        hidden_size=32,
        depth=1,
        num_heads=2,
        num_classes=num_classes,
        in_context_len=0,
        in_context_start=0,
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # adaLN-Zero starts at zero; random weights make the images depend on the input
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    pixelgen.save_pretrained(tiny_class_model(), folder)
    return folder


@pytest.fixture(scope="module")
def model(checkpoint):
    return pixelgen.load_pretrained(checkpoint)


def run_api(model, out, **kw):
    args = dict(
        num=NUM,
        per_class=PER_CLASS,
        sampler="heun",
        sampler_params=SAMPLER,
        seed=7,
        batch_size=3,
        shard_size=SHARD,
        progress=False,
    )
    return generate_class_samples(model, out, **{**args, **kw})


@pytest.fixture(scope="module")
def reference_file(model, tmp_path_factory):
    """One uninterrupted single-process run: the file every other way of making the set must reproduce."""
    result = run_api(model, tmp_path_factory.mktemp("ref"))
    assert result.samples is not None and result.images_generated == NUM
    return result.samples


def cli_args(checkpoint, out, *extra):
    return [
        "sample",
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out),
        "--num-samples",
        str(NUM),
        "--per-class",
        str(PER_CLASS),
        "--sampler",
        "heun",
        "--steps",
        "3",
        "--guidance",
        "2",
        "--interval",
        "0.1",
        "0.9",
        "--shift",
        "2",
        "--seed",
        "7",
        "--shard-size",
        str(SHARD),
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


def test_set_is_ordered_class_balanced_and_in_adm_format(reference_file, model):
    with np.load(reference_file) as data:
        assert data.files == ["arr_0"]
        images = data["arr_0"]
    assert images.shape == (NUM, 16, 16, 3) and images.dtype == np.uint8
    labels = class_balanced_labels(NUM, PER_CLASS)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3]
    sampler = build_sampler("heun", **SAMPLER)
    for i in (0, 5, 10):  # sample i = class i // per_class from noise (seed, i)
        one = generate(model, labels[i : i + 1], sampler=sampler, seed=7, start_index=i, progress=False)
        assert np.array_equal(one[0].permute(1, 2, 0).numpy(), images[i])
    assert len({images[i].tobytes() for i in range(NUM)}) == NUM
    folder = reference_file.parent
    assert (folder / "grid_classes.png").is_file() and any(folder.glob("grid_class0*.png"))
    assert not (folder / "shards").exists()  # shards removed once samples.npz exists
    manifest = json.loads((folder / "run.json").read_text())
    assert manifest["sampler"] == "heun" and manifest["sampler_params"] == SAMPLER and manifest["seed"] == 7


def test_two_gloo_processes_with_another_batch_size_give_the_same_bytes(reference_file, checkpoint, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "pixelgen.cli",
        *cli_args(checkpoint, tmp_path / "out", "--batch-size", "2"),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "rank 0/2" in proc.stderr and "rank 1/2" in proc.stderr  # both ranks did work
    assert (tmp_path / "out" / "samples.npz").read_bytes() == reference_file.read_bytes()


def test_interrupted_run_resumes_to_the_same_file(reference_file, checkpoint, tmp_path):
    from pixelgen.cli import main

    out = tmp_path / "out"
    assert main(cli_args(checkpoint, out, "--batch-size", "4", "--max-shards", "1")) == 0
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard_00000.npy"]
    assert not (out / "samples.npz").exists()
    (out / "shards" / "shard_00001.npy").write_bytes(b"half-written garbage")  # a corrupt shard is redone
    assert main(cli_args(checkpoint, out, "--batch-size", "5")) == 0
    assert (out / "samples.npz").read_bytes() == reference_file.read_bytes()
    assert main(cli_args(checkpoint, out)) == 0  # finished: nothing to do


def test_static_split_for_independent_jobs(reference_file, model, tmp_path):
    first = run_api(model, tmp_path, rank=1, world_size=2, batch_size=1)
    assert first.generated_shards == [1] and first.samples is None
    second = run_api(model, tmp_path, rank=0, world_size=2, batch_size=2, keep_shards=True)
    assert second.generated_shards == [0, 2] and second.samples.read_bytes() == reference_file.read_bytes()
    assert len(list((tmp_path / "shards").iterdir())) == 3


def test_a_restart_with_other_settings_is_refused(model, tmp_path):
    run_api(model, tmp_path, max_shards=1)
    with pytest.raises(ValueError, match="different run.*seed"):
        run_api(model, tmp_path, seed=8)


def test_class_count_checks(model, checkpoint, tmp_path, capsys):
    from pixelgen.cli import main

    with pytest.raises(ValueError, match="need 5 classes but the checkpoint has 4"):
        run_api(model, tmp_path, num=13)
    with pytest.raises(ValueError, match="has 4 classes but 1000 were asked for"):
        run_api(model, tmp_path, expected_classes=1000)
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(checkpoint),
                "--out",
                str(tmp_path / "p"),
                "--preset",
                "xl_cfg",
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "has 4 classes but 1000 were asked for" in capsys.readouterr().err
    text_model = pixelgen.build_model(
        "jit_t2i",
        input_size=16,
        in_channels=3,
        num_groups=2,
        hidden_size=32,
        num_blocks=1,
        num_text_blocks=1,
        patch_size=8,
        txt_embed_dim=8,
        txt_max_length=4,
        bottleneck_dim=8,
    )
    with pytest.raises(ValueError, match="text-to-image"):
        run_api(text_model, tmp_path)
    with pytest.raises(ValueError, match="at least 1"):
        run_api(model, tmp_path, shard_size=0)


def test_presets_and_overrides():
    from pixelgen.cli.sample import _settings, add_parser

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_parser(sub)
    args = parser.parse_args(["sample", "--checkpoint", "c", "--out", "o", "--preset", "xl_cfg"])
    sampler, params, num, per_class, classes = _settings(args, 1000)
    assert (sampler, num, per_class, classes) == ("heun", 50_000, 50, 1000)
    assert params == {
        "num_steps": 50,
        "exact_henu": True,
        "guidance": 2.25,
        "guidance_interval_min": 0.1,
        "guidance_interval_max": 0.9,
        "timeshift": 2.0,
    }
    build_sampler(sampler, **params)  # the sampler accepts every name
    args = parser.parse_args(
        [
            "sample",
            "--checkpoint",
            "c",
            "--out",
            "o",
            "--preset",
            "xl_nocfg",
            "--guidance",
            "1.5",
            "--lazy-heun",
            "--num-samples",
            "100",
        ]
    )
    _, params, num, _, _ = _settings(args, 1000)
    assert params["guidance"] == 1.5 and params["exact_henu"] is False and num == 100
    assert sampling_preset("xl_nocfg").params["guidance"] == 1.0
    args = parser.parse_args(
        ["sample", "--checkpoint", "c", "--out", "o", "--per-class", "2"]
    )  # no preset: every class of the checkpoint
    assert _settings(args, 4)[2:] == (8, 2, None)
