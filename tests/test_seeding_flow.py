"""pixelgen.seeding (one generator rule, the named rules that keep existing numbers) and pixelgen.flow (the one
home of the path, used by training and sampling)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pixelgen
from pixelgen import flow, seeding
from pixelgen.eval.prompt_sets import original_noise
from pixelgen.generate import initial_noise, to_uint8


def test_generator_depends_on_seed_and_keys_only():
    a = torch.randn(4, generator=seeding.generator(3, 7))
    assert torch.equal(a, torch.randn(4, generator=seeding.generator(3, 7)))
    assert not torch.equal(a, torch.randn(4, generator=seeding.generator(3, 8)))
    assert not torch.equal(a, torch.randn(4, generator=seeding.generator(4, 7)))
    # The rule: numpy's SeedSequence of (seed, *keys), two 32-bit words.
    words = np.random.SeedSequence([3, 7]).generate_state(2, dtype=np.uint32)
    assert seeding.derive_seed(3, 7) == int(words[0]) << 32 | int(words[1])
    with pytest.raises(ValueError, match="key must be a non-negative integer"):
        seeding.generator(0, -1)


def test_named_rules_keep_their_numbers():
    assert torch.equal(
        torch.randn(5, generator=seeding.seed_only(11)), torch.randn(5, generator=torch.Generator().manual_seed(11))
    )
    # The trainer's per-sample seeds (golden-ratio mix, 62 bits): pinned so runs keep resuming onto the same draws.
    seeds = seeding.sample_seeds(1234, 0, 3)
    mix = 0x9E3779B97F4A7C15
    expected = [((i + 1) * mix + 1234) % (1 << 64) & ((1 << 62) - 1) for i in range(3)]
    assert seeds.tolist() == expected
    assert seeding.offset_seed(5, (2, 7919), (3, 1)) == 5 + 2 * 7919 + 3


def test_noise_rules_of_the_generation_loop():
    per_index, _ = initial_noise(9, [0, 4], (2, 3))
    assert torch.equal(per_index[1], torch.randn(2, 3, generator=seeding.generator(9, 4)))
    seed_only, gens = initial_noise(9, [0, 4], (2, 3), rule="seed_only")
    assert torch.equal(seed_only[1], original_noise(4, (2, 3))[0])  # the original's evaluation noise
    assert isinstance(gens[0], torch.Generator)
    with pytest.raises(ValueError, match="Unknown noise rule"):
        initial_noise(0, [0], (1,), rule="per_batch")


def test_generate_noise_rule_option():
    model = pixelgen.build_model(
        "jit", input_size=8, patch_size=4, in_channels=3, hidden_size=16, depth=1, num_heads=1,
        num_classes=3, in_context_len=0, in_context_start=0,
    )  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.1)
    sampler = pixelgen.build_sampler("euler", num_steps=2)
    a = pixelgen.generate(model, [0, 1], sampler=sampler, noise="seed_only", start_index=2, progress=False)
    noise = torch.stack([original_noise(k, (3, 8, 8))[0] for k in (2, 3)])
    with torch.no_grad():
        expected = sampler(model, noise, torch.tensor([0, 1]))
    assert torch.equal(a, to_uint8(expected))
    b = pixelgen.generate(model, [0, 1], sampler=sampler, start_index=2, progress=False)
    assert not torch.equal(a, b)  # per_index (the default) is another stream


# -- flow ------------------------------------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(st.floats(0.0, 1.0), st.floats(0.0, 0.2))
def test_x_to_v_is_one_rule_for_a_batch_time_and_per_sample_times(t, t_eps):
    x_hat, x = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    if max(1 - t, t_eps) == 0:
        return
    per_sample = flow.x_to_v(x_hat, x, torch.full((2,), t, dtype=torch.float64), t_eps)
    torch.testing.assert_close(flow.x_to_v(x_hat, x, t, t_eps), per_sample)
    torch.testing.assert_close(per_sample, (x_hat - x) / max(1 - t, t_eps))


def test_flow_is_the_one_home_of_the_path():
    assert flow.T_EPS == 0.05
    from pixelgen import losses

    assert losses.sample_t is flow.sample_t and losses.time_shift is flow.time_shift and losses.x_to_v is flow.x_to_v
    grid = flow.time_grid(10, 3.0)
    torch.testing.assert_close(grid, flow.time_shift(flow.uniform_grid(10), 3.0))
    x, noise, t = torch.randn(3, 2), torch.randn(3, 2), torch.tensor([0.0, 0.5, 1.0])
    x_t = flow.interpolate(x, noise, t)
    torch.testing.assert_close(x_t[0], noise[0])
    torch.testing.assert_close(x_t[2], x[2])
    # x̂ = x makes v point from x_t to x; the score of the exact path is −ε/(1 − t).
    v = flow.x_to_v(x, x_t, t[1].item())
    torch.testing.assert_close(x_t[1] + 0.5 * v[1], x[1])
    torch.testing.assert_close(flow.score_exact(x[1], x_t[1], 0.5), -noise[1] / 0.5)


def test_condition_dropout_of_a_structured_condition_keeps_each_mask_with_its_embeddings():
    from pixelgen.losses import drop_condition

    emb, mask = torch.randn(4, 3, 2), torch.tensor([[1, 1, 0]] * 4, dtype=torch.bool)
    empty = {"emb": torch.zeros(1, 3, 2), "mask": torch.tensor([[1, 0, 0]], dtype=torch.bool)}
    draws = torch.tensor([0.05, 0.5, 0.01, 0.9])  # rows 0 and 2 drop at p = 0.1
    out = drop_condition({"emb": emb, "mask": mask}, 0.1, uncond=empty, draws=draws)
    for row in range(4):
        dropped = row in (0, 2)
        assert torch.equal(out["emb"][row], torch.zeros(3, 2) if dropped else emb[row])
        assert torch.equal(out["mask"][row], empty["mask"][0] if dropped else mask[row])
    plain = drop_condition(emb, 0.1, uncond=empty["emb"], draws=draws)
    assert torch.equal(plain, out["emb"])  # the same rows as for a plain tensor condition
    with pytest.raises(ValueError, match="same keys"):
        drop_condition({"emb": emb, "mask": mask}, 0.1, uncond={"emb": empty["emb"]}, draws=draws)
