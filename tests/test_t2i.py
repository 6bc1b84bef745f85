"""Text-to-image assembly on CPU with the tiny random text encoder: padding mask, pipeline, ``pixelgen generate``."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from pixelgen.backbones import build_model
from pixelgen.checkpoint import save_pretrained
from pixelgen.cli import main as cli_main
from pixelgen.conditioners import build_tiny_qwen3
from pixelgen.conditioners.pipeline import (
    TextToImagePipeline,
    pack_text_condition,
    save_text_encoder_spec,
)
from pixelgen.conditioners.training import TextBatchEncoder, attach_text_mask_unpacking
from pixelgen.samplers import build_sampler, generate

TINY_T2I = dict(
    input_size=16, patch_size=4, hidden_size=32, num_groups=2, num_blocks=2, num_text_blocks=1,
    txt_embed_dim=64, txt_max_length=128, bottleneck_dim=16,
)  # fmt: skip


def random_t2i(seed: int = 0) -> torch.nn.Module:
    """A tiny T2I backbone with non-zero weights (the original init outputs exactly zero)."""
    torch.manual_seed(seed)
    model = build_model("jit_t2i", **TINY_T2I).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0.0, 0.05)
    return model


@pytest.fixture(scope="module")
def encoder():
    return build_tiny_qwen3()


@pytest.fixture(scope="module")
def model():
    return random_t2i()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model, encoder):
    folder = tmp_path_factory.mktemp("t2i_ckpt")
    save_pretrained(model, folder)
    save_text_encoder_spec(folder, encoder)
    return folder


def _padding_changed(embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    changed = embeddings.clone()
    changed[~mask] += torch.randn_like(changed[~mask])
    return changed


# -- the optional key-padding mask ---------------------------------------------------------------------
def test_padding_mask_makes_padding_irrelevant(model):
    masked_encoder = build_tiny_qwen3(pad_mask=True)
    enc = masked_encoder(["a photo of a cat", "a rocket on the launch pad", ""])
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([0.2, 0.5, 0.9])
    changed = _padding_changed(enc.embeddings, enc.mask)
    kwargs = masked_encoder.backbone_kwargs(enc)
    with torch.no_grad():
        before = model(x, t, enc.embeddings, **kwargs)
        after = model(x, t, changed, **kwargs)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)

    # The same through the packed condition the trainer and the samplers carry (mask as an extra channel).
    hooked = random_t2i()
    handle = attach_text_mask_unpacking(hooked)
    packed = pack_text_condition(enc)
    packed_changed = packed.clone()
    packed_changed[..., :-1] = changed
    with torch.no_grad():
        torch.testing.assert_close(hooked(x, t, packed), before, rtol=0, atol=1e-6)
        torch.testing.assert_close(hooked(x, t, packed_changed), before, rtol=0, atol=1e-6)
        plain = hooked(x, t, enc.embeddings)  # an unpacked condition passes through the hook untouched
    handle.remove()
    with torch.no_grad():
        torch.testing.assert_close(plain, model(x, t, enc.embeddings), rtol=0, atol=0)


def test_padding_unmasked_by_default_as_the_original(model, encoder):
    enc = encoder(["a photo of a cat", "two apples"])
    assert encoder.backbone_kwargs(enc) == {}
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([0.3, 0.6])
    batch = TextBatchEncoder(encoder)({"image": x, "caption": ["a photo of a cat", "two apples"]})
    torch.testing.assert_close(batch["cond"], enc.embeddings, rtol=0, atol=0)
    torch.testing.assert_close(batch["uncond"], encoder([""]).embeddings.expand(2, -1, -1), rtol=0, atol=0)
    with torch.no_grad():
        original = model(x, t, enc.embeddings)
        changed = model(x, t, _padding_changed(enc.embeddings, enc.mask))
    assert not torch.allclose(original, changed, atol=1e-4)  # padding tokens do reach the backbone
    pipe = TextToImagePipeline(model, encoder)
    with torch.no_grad():
        torch.testing.assert_close(pipe._denoiser()(x, t, pipe._condition(enc)), original, rtol=0, atol=0)


# -- the pipeline ----------------------------------------------------------------------------------------
def test_pipeline_matches_generate_and_ignores_batching(model, encoder):
    pipe = TextToImagePipeline(model, encoder)
    prompts = ["a photo of a cat", "a cup of coffee"]
    one = pipe(prompts, num_images_per_prompt=2, seed=3, batch_size=1, num_steps=4)
    three = pipe(prompts, num_images_per_prompt=2, seed=3, batch_size=3, num_steps=4)
    assert one.images.shape == (4, 3, 16, 16) and one.images.dtype == torch.uint8
    assert one.prompts == ["a photo of a cat"] * 2 + ["a cup of coffee"] * 2
    # Noise depends on (seed, image index) only; batched kernels may still round a pixel differently.
    assert (one.images.int() - three.images.int()).abs().max() <= 1
    # Same noise rule and numbers as pixelgen.samplers.generate (Adams-2, guidance 4, shift 3).
    cond = encoder(one.prompts).embeddings
    reference = generate(
        model, cond, sampler=build_sampler("adams", order=2, num_steps=4, guidance=4.0, timeshift=3.0),
        seed=3, batch_size=3, uncond=encoder.unconditional(1).embeddings, progress=False,
    )  # fmt: skip
    assert torch.equal(three.images, reference)


def test_negative_prompt_does_not_leak(model, encoder):
    pipe = TextToImagePipeline(model, encoder)
    first = pipe(["a horse"], seed=0, num_steps=3).images
    negative = pipe(["a horse"], seed=0, num_steps=3, negative_prompt="blurry, low quality").images
    again = pipe(["a horse"], seed=0, num_steps=3).images
    assert not torch.equal(first, negative)
    assert torch.equal(first, again)


def test_other_resolutions_and_input_checks(model, encoder):
    pipe = TextToImagePipeline(model, encoder)
    wide = pipe(["a boat"], height=24, width=32, num_steps=2)
    assert wide.images.shape == (1, 3, 24, 32)
    with pytest.raises(ValueError, match="multiple of the patch size 4"):
        pipe(["a boat"], height=18, num_steps=2)
    with pytest.raises(ValueError, match="empty"):
        pipe([], num_steps=2)
    with pytest.raises(ValueError, match="width 64 but the text encoder .* gives width 32"):
        TextToImagePipeline(model, build_tiny_qwen3(hidden_size=32))


def test_trajectory_frames(model, encoder, tmp_path):
    from pixelgen.conditioners.pipeline import save_trajectory_gif

    result = TextToImagePipeline(model, encoder)(
        ["a castle"], num_images_per_prompt=2, num_steps=5, return_trajectory=True
    )
    assert result.trajectories.shape == (2, 6, 3, 16, 16)
    assert torch.equal(result.trajectories[:, -1], result.images)
    gif = Image.open(save_trajectory_gif(result.trajectories[0], tmp_path / "t.gif"))
    assert gif.n_frames == 6 and gif.info["duration"] == 200 and gif.info["loop"] == 0


# -- pixelgen generate ----------------------------------------------------------------------------------
def test_generate_command(checkpoint, tmp_path):
    out = tmp_path / "out"
    code = cli_main([
        "generate", "--checkpoint", str(checkpoint), "--prompt", "a photo of a cat", "--prompt", "a red bus",
        "--num", "2", "--seed", "1", "--steps", "3", "--out", str(out), "--trajectory", "--device", "cpu",
    ])  # fmt: skip
    assert code == 0
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["a photo of a cat"] * 2 + ["a red bus"] * 2
    assert records[0]["sampler"] == "adams" and records[0]["guidance"] == 4.0 and records[0]["timeshift"] == 3.0
    for r in records:
        assert Image.open(out / r["file"]).size == (16, 16)
        assert Image.open(out / r["trajectory"]).n_frames == 4


def test_generate_command_errors(checkpoint, tmp_path, capsys):
    assert cli_main(["generate", "--checkpoint", str(checkpoint), "--out", str(tmp_path)]) == 1
    assert "No prompt given" in capsys.readouterr().err
    args = ["generate", "--checkpoint", str(checkpoint), "--prompt", "a cat", "--steps", "2", "--out", str(tmp_path)]
    assert cli_main([*args, "--height", "10"]) == 1
    assert "multiple of the patch size" in capsys.readouterr().err
    narrow = build_tiny_qwen3(hidden_size=32)
    narrow.model.save_pretrained(tmp_path / "narrow")
    narrow.tokenizer.save_pretrained(tmp_path / "narrow")
    assert cli_main([*args, "--text-encoder", str(tmp_path / "narrow")]) == 1
    assert "text embeddings of width 64" in capsys.readouterr().err
    assert cli_main(["generate", "--checkpoint", str(tmp_path / "missing"), "--prompt", "a cat"]) == 1
    assert "does not exist" in capsys.readouterr().err


# -- the recipe ------------------------------------------------------------------------------------------
def _load_recipe():
    import importlib.util
    import sys
    from pathlib import Path

    if "recipes_t2i" not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "recipes" / "t2i.py"
        spec = importlib.util.spec_from_file_location("recipes_t2i", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["recipes_t2i"] = module
        spec.loader.exec_module(module)
    return sys.modules["recipes_t2i"]


def test_stage_presets():
    t2i = _load_recipe()
    expected = {  # res, batch, accum, lr, betas, steps, dataset, grid sampler (spec §6.6, §5.9)
        "pretrain256": (256, 64, 3, 2e-4, (0.9, 0.95), 200_000, "webdataset_captions", "euler"),
        "pretrain512": (512, 16, 4, 1e-4, (0.9, 0.95), 100_000, "webdataset_captions", "euler"),
        "sft512": (512, 16, 4, 1e-5, (0.9, 0.999), 60_000, "caption_folder", "adams"),
    }
    for stage, (res, batch, accum, lr, betas, steps, dataset, sampler) in expected.items():
        c = t2i.stage_config(stage)
        assert (c.data.resolution, c.data.batch_size, c.optim.grad_accum, c.optim.lr, tuple(c.optim.betas)) == (
            res,
            batch,
            accum,
            lr,
            betas,
        )
        assert (c.max_steps, c.data.dataset, c.sample.sampler, c.optim.grad_clip, c.optim.weight_decay) == (
            steps,
            dataset,
            sampler,
            1.0,
            0.0,
        )
        assert c.model.name == "pixelgen_xxl_16_t2i" and c.model.overrides.get("input_size", 256) == res
    assert t2i.stage_config("sft512").sample.params == {"order": 2, "num_steps": 25, "guidance": 4.0, "timeshift": 3.0}
    with pytest.raises(ValueError, match="starts from a pretrain256 run"):
        t2i.train_stage(t2i.stage_config("pretrain512", data="x"), t2i.T2ISettings(), stage="pretrain512")
    with pytest.raises(FileNotFoundError, match="No training data given"):
        t2i.train_stage(t2i.stage_config("pretrain256"), t2i.T2ISettings(), stage="pretrain256")
    with pytest.raises(FileNotFoundError, match="No shards matched"):
        t2i.train_stage(t2i.stage_config("pretrain256", data="/no/such/shards"), t2i.T2ISettings(), stage="pretrain256")
    with pytest.raises(FileNotFoundError, match="caption folder .* does not exist"):
        t2i.train_stage(
            t2i.stage_config("sft512", data="/no/such/folder", init_from="x"), t2i.T2ISettings(), stage="sft512"
        )


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    t2i = _load_recipe()
    out = tmp_path_factory.mktemp("t2i_demo")
    summary = t2i.run_demo(out, steps_scale=0.01, grid_steps=2, progress=False)
    return t2i, out, summary


def test_demo_end_to_end(demo_run, tmp_path):
    t2i, out, summary = demo_run
    assert json.loads((out / "demo_summary.json").read_text()) == summary
    for stage in t2i.STAGES:
        run = out / stage
        assert summary["stages"][stage]["steps"] == 2
        assert (run / "checkpoints" / "latest.pt").is_file()
        assert (run / "metrics.jsonl").is_file() and (run / "loss_curve.png").is_file()
        grid = Image.open(next((run / "samples").glob("step_*.png")))
        assert grid.width > 128 and grid.height > 128  # 8 images with their prompts underneath
        spec = json.loads((run / "export" / "text_encoder.json").read_text())
        assert spec["name"] == "qwen3_tiny_random" and spec["pad_mask"] is False
    assert cli_main([
        "generate", "--checkpoint", str(out / "sft512" / "export"), "--prompt", "a photo of a cat",
        "--num", "1", "--steps", "2", "--out", str(tmp_path), "--device", "cpu",
    ]) == 0  # fmt: skip
    assert Image.open(next(tmp_path.glob("*.png"))).size == (64, 64)


def test_stage_transitions_fresh_optimiser_and_kept_ema(demo_run):
    from pixelgen.conditioners.training import T2ITrainer
    from pixelgen.train import load_training_checkpoint

    t2i, out, _ = demo_run
    for stage, previous in t2i.NEEDS_INIT.items():
        config = t2i.demo_config(stage, out / "transition", steps=1, sft_data=out / "sft_captions")
        config.init_from = str(out / previous)
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
    t2i, out, summary = demo_run
    config = t2i.demo_config("pretrain256", out, steps=3, grid_steps=2)
    settings = t2i.T2ISettings(text_encoder=dict(t2i.DEMO_TEXT_ENCODER), prompts=["a photo of a cat"])
    result = t2i.train_stage(config, settings, stage="pretrain256", resume="auto", progress=False)
    assert result.step == 3
    events = [json.loads(line) for line in (out / "pretrain256" / "metrics.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "resume" for e in events)
