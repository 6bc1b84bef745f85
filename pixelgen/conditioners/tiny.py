"""A tiny Qwen3 text encoder with random weights and an offline tokenizer, for tests and CPU demos.

Nothing is downloaded: the tokenizer is a byte-level BPE trained (deterministically) on a small built-in
caption corpus, so every string tokenises without unknown tokens; the encoder is a ``transformers``
``Qwen3Model`` built from a small ``Qwen3Config`` with weights drawn from a fixed seed. The same arguments
always give the same encoder, so a checkpoint only has to record them (see ``describe()``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .qwen3 import Qwen3TextConditioner

__all__ = ["TINY_CORPUS", "build_tiny_tokenizer", "build_tiny_qwen3"]

PAD_TOKEN = "<|endoftext|>"

# Short captions in the style of the demo data and of GenEval prompts; only the BPE merges depend on them.
TINY_CORPUS: tuple[str, ...] = (
    "a photo of a cat",
    "a photo of a dog sitting on a sofa",
    "an astronaut standing in front of a flag",
    "a cup of coffee on a wooden table",
    "a rocket on the launch pad under a blue sky",
    "a camera man with a tripod in a park",
    "a red brick wall with a small window",
    "a horse running across a green field",
    "two apples and a banana on a white plate",
    "a bowl of fruit next to a glass of water",
    "a yellow bus parked beside a tall building",
    "a black and white photograph of a city street",
    "a close up of a colourful flower in the garden",
    "a small boat on a calm lake at sunset",
    "a mountain covered in snow above the clouds",
    "a child holding a red balloon",
    "three birds sitting on a power line",
    "a plate of pasta with tomato sauce",
    "a bicycle leaning against a fence",
    "an old clock tower in the town square",
    "a picture of a moon over the sea",
    "a visual representation of a forest in autumn",
    "a scene of a busy market with many people",
    "a view of a bridge over a river",
    "a depiction of a castle on a hill",
    "an image of a green car to the left of a blue truck",
    "a giraffe to the right of an elephant",
    "four pink donuts in a box",
    "a purple umbrella and an orange suitcase",
    "unrealistic, jpeg artifacts, blurry, low quality",
)


def build_tiny_tokenizer(corpus: Sequence[str] = TINY_CORPUS, vocab_size: int = 512):
    """A right-padding ``PreTrainedTokenizerFast`` (byte-level BPE) trained offline on ``corpus``."""
    from ..utils.extras import require_extra

    require_extra("tokenizers", "t2i", feature="The tiny text encoder's tokenizer")
    require_extra("transformers", "t2i", feature="The tiny text encoder")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if not corpus or not all(isinstance(c, str) for c in corpus):
        raise ValueError("The tokenizer corpus must be a non-empty list of strings.")
    if vocab_size < 257:
        raise ValueError(f"vocab_size must be at least 257 (256 bytes plus the pad token), got {vocab_size}.")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(corpus), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD_TOKEN, eos_token=PAD_TOKEN, padding_side="right"
    )


def build_tiny_qwen3(
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int = 512,
    max_length: int = 128,
    embed_dim: int | None = None,
    pad_mask: bool = False,
    device: torch.device | str | None = None,
) -> Qwen3TextConditioner:
    """The tiny random Qwen3 conditioner (float32; about 0.1M parameters at the defaults)."""
    from ..utils.extras import require_extra

    require_extra("transformers", "t2i", feature="The tiny text encoder")
    from transformers import Qwen3Config, Qwen3Model

    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads}).")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be divisible by num_kv_heads ({num_kv_heads}).")
    tokenizer = build_tiny_tokenizer(vocab_size=vocab_size)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max(max_length, 128),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = Qwen3Model(config)
    encoder.to(device or "cpu")
    source = {
        "name": "qwen3_tiny_random",
        "seed": seed,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "vocab_size": vocab_size,
    }
    return Qwen3TextConditioner(
        encoder, tokenizer, max_length=max_length, embed_dim=embed_dim, pad_mask=pad_mask, source=source
    )
