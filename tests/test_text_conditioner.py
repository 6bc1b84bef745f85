"""The Qwen3 text conditioner on the tiny random encoder: shapes, padding, truncation, caching, loading."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixelgen.conditioners import (
    TextEncoding,
    build_conditioner,
    build_conditioner_from_spec,
    build_tiny_qwen3,
)
from pixelgen.registry import registries
from pixelgen.utils.hub import WeightsNotFoundError

LONG_PROMPT = " ".join(["a photo of a cat on a wooden table"] * 40)  # well over 128 tokens


@pytest.fixture(scope="module")
def encoder():
    return build_conditioner("qwen3_tiny_random")


class CallCounter:
    """Counts the encoder's forward calls (to see cache hits)."""

    def __init__(self, conditioner):
        self.calls = 0
        conditioner.model.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1


def test_registered():
    assert {"qwen3", "qwen3_tiny_random"} <= set(registries.conditioner.list())


def test_shapes_and_right_padding(encoder):
    enc = encoder(["a photo of a cat", "a cup of coffee on a wooden table", ""])
    assert isinstance(enc, TextEncoding)
    assert enc.embeddings.shape == (3, 128, 64) and enc.embeddings.dtype == torch.float32
    assert enc.mask.shape == (3, 128) and enc.mask.dtype == torch.bool
    ids = encoder.tokenize(["a photo of a cat"])["input_ids"][0]
    n = int(enc.lengths[0])
    assert 0 < n < 128 and enc.lengths[2] == 0
    # Right padding: real tokens first, then only pad tokens.
    assert enc.mask[0, :n].all() and not enc.mask[0, n:].any()
    assert (ids[n:] == encoder.tokenizer.pad_token_id).all()
    assert torch.isfinite(enc.embeddings).all()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(max_size=60), min_size=1, max_size=4))
def test_prompt_encoding_independent_of_batch(encoder, prompts):
    # Right padding + a causal encoder: a prompt's embedding does not depend on its batch neighbours.
    together = encoder(prompts)
    assert together.embeddings.shape == (len(prompts), 128, 64)
    for i, p in enumerate(prompts):
        alone = encoder([p])
        torch.testing.assert_close(together.embeddings[i], alone.embeddings[0], atol=1e-5, rtol=1e-5)
        assert torch.equal(together.mask[i], alone.mask[0])


def test_truncation_warns_once_and_keeps_first_tokens():
    enc = build_tiny_qwen3()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        long = enc([LONG_PROMPT])
        longer = enc([LONG_PROMPT + " and a dog in the garden"])
    truncation = [w for w in caught if "truncated" in str(w.message)]
    assert len(truncation) == 1
    assert long.embeddings.shape == (1, 128, 64) and bool(long.mask.all())
    # Both prompts share their first 128 tokens, so truncation leaves identical encodings.
    torch.testing.assert_close(long.embeddings, longer.embeddings)


def test_truncation_warning_needs_a_prompt_longer_than_the_limit():
    enc = build_tiny_qwen3(max_length=8)  # "a a a ..." is one token per word
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exact = enc(["a", " ".join(["a"] * 8)])  # a full row, nothing cut
    assert exact.mask.sum(dim=1).tolist() == [1, 8]
    with pytest.warns(UserWarning, match="A prompt of 9 tokens was truncated to the text encoder's limit of 8"):
        enc(["a", " ".join(["a"] * 9)])


def test_unconditional_cache_no_negative_prompt_leak():
    enc = build_tiny_qwen3()
    counter = CallCounter(enc)
    empty = enc.unconditional(2)
    negative = enc.unconditional(3, negative_prompt="blurry, low quality")
    empty_again = enc.unconditional(4)
    negative_again = enc.unconditional(1, negative_prompt="blurry, low quality")
    assert counter.calls == 2  # each distinct prompt encoded once
    assert empty.embeddings.shape == (2, 128, 64) and empty_again.embeddings.shape == (4, 128, 64)
    # The empty prompt's entry survives the negative prompt (the original overwrote it).
    torch.testing.assert_close(empty_again.embeddings[0], enc([""]).embeddings[0])
    torch.testing.assert_close(negative.embeddings[0], enc(["blurry, low quality"]).embeddings[0])
    torch.testing.assert_close(negative_again.embeddings[0], negative.embeddings[0])
    assert not torch.allclose(empty_again.embeddings[0], negative.embeddings[0])
    assert int(empty.lengths[0]) == 0 and int(negative.lengths[0]) > 0


def test_unconditional_cache_cleared_when_moved():
    enc = build_tiny_qwen3()
    counter = CallCounter(enc)
    enc.unconditional(1)
    enc.to(torch.float64)
    enc.unconditional(1)
    assert counter.calls == 2


@pytest.mark.parametrize("width", [32, 80])
def test_embed_dim_pads_or_truncates_channels(encoder, width):
    narrow = build_tiny_qwen3(embed_dim=width)
    full = encoder(["a red brick wall"]).embeddings
    out = narrow(["a red brick wall"]).embeddings
    assert out.shape == (1, 128, width)
    keep = min(width, 64)
    torch.testing.assert_close(out[..., :keep], full[..., :keep])
    assert not out[..., keep:].any()


def test_frozen(encoder):
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training and not encoder.model.training
    assert not encoder(["a cat"]).embeddings.requires_grad


def test_pad_mask_option_only_changes_the_condition():
    plain, masked = build_tiny_qwen3(), build_tiny_qwen3(pad_mask=True)
    a, b = plain(["a cat"]), masked(["a cat"])
    torch.testing.assert_close(a.embeddings, b.embeddings)
    assert isinstance(plain.condition(a), torch.Tensor) and torch.equal(plain.condition(a), a.embeddings)
    cond = masked.condition(b)
    assert set(cond) == {"emb", "mask"}
    assert torch.equal(cond["emb"], b.embeddings) and torch.equal(cond["mask"], b.mask)


def test_input_checks(encoder):
    with pytest.raises(ValueError, match="empty"):
        encoder([])
    with pytest.raises(TypeError, match="only strings"):
        encoder(["a cat", 3])
    with pytest.raises(TypeError, match="list of strings"):
        encoder(None)
    with pytest.raises(ValueError, match="batch_size"):
        encoder.unconditional(0)
    with pytest.raises(TypeError, match="negative_prompt"):
        encoder.unconditional(1, negative_prompt=["x"])
    with pytest.raises(ValueError, match="divisible"):
        build_tiny_qwen3(hidden_size=30, num_heads=4)


def test_tiny_encoder_is_reproducible_from_its_description(encoder):
    rebuilt = build_conditioner_from_spec(encoder.describe())
    assert rebuilt.tokenizer.get_vocab() == encoder.tokenizer.get_vocab()
    torch.testing.assert_close(rebuilt(["a horse"]).embeddings, encoder(["a horse"]).embeddings, rtol=0, atol=0)


def test_loads_from_folder_and_hf_cache(encoder, tmp_path, monkeypatch):
    folder = tmp_path / "tiny-qwen3"
    encoder.model.save_pretrained(folder)
    encoder.tokenizer.save_pretrained(folder)
    expected = encoder(["a horse", ""]).embeddings

    from_folder = build_conditioner_from_spec(str(folder))
    torch.testing.assert_close(from_folder(["a horse", ""]).embeddings, expected)
    assert from_folder.describe()["model"] == str(folder)

    # A Hugging Face cache snapshot is found by name, offline.
    cache = tmp_path / "hf"
    snapshot = cache / "models--Qwen--Qwen3-0.6B" / "snapshots" / "0123abcd"
    snapshot.parent.mkdir(parents=True)
    folder.rename(snapshot)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    by_name = build_conditioner_from_spec("Qwen3-0.6B")
    torch.testing.assert_close(by_name(["a horse", ""]).embeddings, expected)


def test_missing_weights_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="Qwen/Qwen3-1.7B.*offline"):
        build_conditioner("qwen3")
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        build_conditioner_from_spec(str(tmp_path / "nowhere" / "qwen"))
    broken = tmp_path / "broken"
    broken.mkdir()
    with pytest.raises(WeightsNotFoundError, match="incomplete"):
        build_conditioner_from_spec(str(broken))
