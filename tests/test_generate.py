"""generate(): per-sample reproducible noise, uint8 conversion, class and text models, input checks."""

from __future__ import annotations

import pytest
import torch

import pixelgen
from pixelgen.generate import generate, to_uint8
from pixelgen.samplers import build_sampler
from pixelgen.seeding import generator as sample_generator


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fresh backbones zero-initialise their output layers (adaLN-Zero); random weights make x̂ depend on
    the input so the tests below can see differences."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return model


@pytest.fixture(scope="module")
def class_model():
    return randomised(
        pixelgen.build_model(
            "jit",
            input_size=16,
            patch_size=4,
            in_channels=3,
            hidden_size=48,
            depth=2,
            num_heads=2,
            num_classes=7,
            in_context_len=0,
            in_context_start=0,
        )
    )


@pytest.fixture(scope="module")
def text_model():
    return randomised(
        pixelgen.build_model(
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
    )


LABELS = [0, 3, 6, 1, 5, 2, 4]


def guided_heun():
    return build_sampler(
        "heun", num_steps=4, timeshift=2.0, guidance=2.25, guidance_interval_min=0.1, guidance_interval_max=0.9
    )


def test_images_do_not_depend_on_batch_size_or_work_split(class_model):
    whole = generate(class_model, LABELS, sampler=guided_heun(), seed=3, batch_size=7, progress=False)
    single = generate(class_model, LABELS, sampler=guided_heun(), seed=3, batch_size=1, progress=False)
    first = generate(class_model, LABELS[:4], sampler=guided_heun(), seed=3, batch_size=3, progress=False)
    second = generate(
        class_model, LABELS[4:], sampler=guided_heun(), seed=3, batch_size=2, progress=False, start_index=4
    )
    assert whole.shape == (7, 3, 16, 16) and whole.dtype == torch.uint8 and whole.device.type == "cpu"
    assert whole.float().std() > 10  # real images, not a constant
    assert torch.equal(whole, single)
    assert torch.equal(whole, torch.cat([first, second]))


def euler(steps: int = 3):
    return build_sampler("euler", num_steps=steps)


def test_seed_and_index_choose_the_noise(class_model):
    base = generate(class_model, [1, 1], sampler=euler(), seed=0, progress=False)
    assert not torch.equal(base[0], base[1])  # same label, different sample index
    assert not torch.equal(base, generate(class_model, [1, 1], sampler=euler(), seed=1, progress=False))
    shifted = generate(class_model, [1], sampler=euler(), seed=0, start_index=1, progress=False)
    assert torch.equal(shifted[0], base[1])


def test_stochastic_sampler_is_batch_independent(class_model):
    sde = build_sampler("euler_maruyama", num_steps=4)
    whole = generate(class_model, LABELS[:4], sampler=sde, seed=5, batch_size=4, progress=False)
    split = generate(class_model, LABELS[:4], sampler=sde, seed=5, batch_size=3, progress=False)
    assert torch.equal(whole, split)


def test_matches_sampler_on_documented_noise(class_model):
    """generate = the sampler on noise from sample_generator(seed, i), null label num_classes, uint8."""
    sampler = guided_heun()
    labels = torch.tensor([2, 4])
    noise = torch.stack([torch.randn(3, 16, 16, generator=sample_generator(9, i)) for i in range(2)])
    with torch.inference_mode():
        x = sampler(class_model, noise, labels, torch.full((2,), 7))
    assert torch.equal(generate(class_model, labels, sampler=sampler, seed=9, progress=False), to_uint8(x))
    assert sampler.last_stats["rows"] < 2 * 2 * sampler.last_stats["nfe"]


def test_uint8_conversion_is_the_originals():
    x = torch.tensor([-1.5, -1.0, -0.9961, 0.0, 0.00392, 0.5, 1.0, 1.2])
    expected = torch.clamp((x + 1) * 127.5 + 0.5, 0, 255).floor().to(torch.uint8)
    assert torch.equal(to_uint8(x), expected)
    assert to_uint8(torch.tensor([-1.0, 0.0, 1.0])).tolist() == [0, 128, 255]


def test_text_model_needs_uncond_when_guided(text_model):
    embeddings = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(0))
    empty = torch.zeros(4, 8)
    sampler = build_sampler("adams", num_steps=4, order=2, guidance=4.0, timeshift=3.0)
    with pytest.raises(ValueError, match="needs uncond"):
        generate(text_model, embeddings, sampler=sampler, progress=False)
    whole = generate(text_model, embeddings, sampler=sampler, uncond=empty, batch_size=3, progress=False)
    single = generate(
        text_model, embeddings, sampler=sampler, uncond=empty[None].expand(3, 4, 8), batch_size=1, progress=False
    )
    assert whole.shape == (3, 3, 16, 16) and torch.equal(whole, single)
    # Unguided sampling needs no unconditional embedding.
    generate(text_model, embeddings, sampler=euler(2), progress=False)


def test_bf16_autocast_runs_and_stays_close(class_model):
    ref = generate(class_model, LABELS[:2], sampler=euler(), progress=False)
    low = generate(class_model, LABELS[:2], sampler=euler(), autocast_dtype=torch.bfloat16, progress=False)
    assert low.dtype == torch.uint8
    assert (low.float() - ref.float()).abs().mean() < 8


def test_restores_training_mode(class_model):
    class_model.train()
    generate(class_model, [0], sampler=euler(1), progress=False)
    assert class_model.training
    class_model.eval()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(class_model):
    cpu = generate(class_model, LABELS[:3], sampler=guided_heun(), progress=False)
    model = class_model.to("cuda")
    try:
        gpu = generate(model, LABELS[:3], sampler=guided_heun(), progress=False)
    finally:
        class_model.to("cpu")
    assert (gpu.int() - cpu.int()).abs().max() <= 2


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"labels_or_embeddings": [0, 7 + 1]}, ValueError, r"class indices in \[0, 7\]"),
        ({"labels_or_embeddings": [0.5]}, TypeError, "labels must be a \\(1,\\) tensor of integer class labels"),
        ({"batch_size": 0}, ValueError, "batch_size must be at least 1"),
        ({"seed": -1}, ValueError, "seed must be a non-negative integer"),
        ({"start_index": 1.5}, ValueError, "start_index must be a non-negative integer"),
        ({"sampler": "heunn"}, KeyError, "did you mean 'heun'"),
        ({"sampler": 3}, TypeError, "sampler must be a registered name or a sampler"),
        ({"uncond": 9}, ValueError, r"uncond for a class model must be one label in \[0, 7\]"),
    ],
)
def test_input_checks(class_model, kwargs, error, match):
    call = {"labels_or_embeddings": [0, 1], "sampler": euler(1), "progress": False, **kwargs}
    with pytest.raises(error, match=match):
        generate(class_model, **call)


def test_model_contract_checks():
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        generate(lambda x, t, y: x, [0], progress=False)
    with pytest.raises(TypeError, match="input_size and in_channels"):
        generate(torch.nn.Linear(2, 2), [0], progress=False)
