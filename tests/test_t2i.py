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
from pixelgen.conditioners.pipeline import TextToImagePipeline, save_text_encoder_spec
from pixelgen.generate import generate
from pixelgen.samplers import build_sampler
from pixelgen.train.text import TextBatchEncoder

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
    condition = masked_encoder.condition(enc)
    assert set(condition) == {"emb", "mask"} and condition["mask"] is enc.mask
    with torch.no_grad():
        before = model(x, t, enc.embeddings, text_mask=enc.mask)
        after = model(x, t, changed, text_mask=enc.mask)
        torch.testing.assert_close(model(x, t, condition), before, rtol=0, atol=0)  # the structured condition
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)

    # Through a guided sampler: the mask rides along with the condition and is batched with it.
    sampler = build_sampler("euler", num_steps=3, guidance=3.0)
    uncond = masked_encoder.condition(masked_encoder.unconditional(1))
    with torch.no_grad():
        sampled = sampler(model, x, condition, uncond)
        sampled_changed = sampler(model, x, {"emb": changed, "mask": enc.mask}, uncond)
    assert sampler.last_stats == {"nfe": 3, "rows": 3 + 6 + 6}  # t = 0 is outside (0, 1]: unguided
    torch.testing.assert_close(sampled_changed, sampled, rtol=0, atol=1e-5)


def test_training_carries_the_padding_mask_as_the_structured_condition(model):
    """With pad_mask the trainer's batches carry {"emb", "mask"}; the objective passes it to the backbone (padding
    changes nothing) and its CFG dropout swaps both leaves of a dropped sample for the empty prompt's."""
    from pixelgen.losses import Objective

    masked_encoder = build_tiny_qwen3(pad_mask=True)
    captions = ["a photo of a cat", "a rocket on the launch pad", "two apples"]
    image = torch.rand(3, 3, 16, 16) * 2 - 1
    batch = TextBatchEncoder(masked_encoder)({"image": image, "caption": captions})
    enc, empty = masked_encoder(captions), masked_encoder.unconditional(3)
    assert set(batch["cond"]) == set(batch["uncond"]) == {"emb", "mask"}
    assert torch.equal(batch["cond"]["mask"], enc.mask) and torch.equal(batch["uncond"]["mask"], empty.mask)
    changed = {**batch, "cond": {"emb": _padding_changed(enc.embeddings, enc.mask), "mask": enc.mask}}
    objective = Objective(["flow_matching"], cond_drop_prob=0.0)
    seeds = torch.tensor([5, 6, 7])
    with torch.no_grad():
        before = objective(model, {**batch, "seeds": seeds})["loss"]
        after = objective(model, {**changed, "seeds": seeds})["loss"]
        unmasked = objective(model, {**batch, "cond": enc.embeddings, "uncond": empty.embeddings, "seeds": seeds})
    torch.testing.assert_close(after, before, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(unmasked["loss"], before)  # the mask did reach the backbone

    # Dropout of every sample: the backbone sees the empty prompt's embeddings and mask.
    calls = []
    record = lambda module, args, kwargs: calls.append(args[2])  # noqa: E731
    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.no_grad():
            Objective(["flow_matching"], cond_drop_prob=1.0)(model, {**batch, "seeds": seeds})
    finally:
        handle.remove()
    seen = calls[-1]
    assert torch.equal(seen["emb"], empty.embeddings) and torch.equal(seen["mask"], empty.mask)


def test_padding_unmasked_by_default_as_the_original(model, encoder):
    enc = encoder(["a photo of a cat", "two apples"])
    assert encoder.condition(enc) is enc.embeddings
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
        torch.testing.assert_close(model(x, t, pipe._condition(enc)), original, rtol=0, atol=0)


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
    # Same noise rule and numbers as pixelgen.generate (Adams-2, guidance 4, shift 3).
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
    assert cli_main(["generate", "--checkpoint", str(checkpoint), "--out", str(tmp_path)]) == 2
    assert "No prompt given" in capsys.readouterr().err
    args = ["generate", "--checkpoint", str(checkpoint), "--prompt", "a cat", "--steps", "2", "--out", str(tmp_path)]
    assert cli_main([*args, "--height", "10"]) == 2
    assert "multiple of the patch size" in capsys.readouterr().err
    narrow = build_tiny_qwen3(hidden_size=32)
    narrow.model.save_pretrained(tmp_path / "narrow")
    narrow.tokenizer.save_pretrained(tmp_path / "narrow")
    assert cli_main([*args, "--text-encoder", str(tmp_path / "narrow")]) == 2
    assert "text embeddings of width 64" in capsys.readouterr().err
    assert cli_main(["generate", "--checkpoint", str(tmp_path / "missing"), "--prompt", "a cat"]) == 2
    assert "does not exist" in capsys.readouterr().err
