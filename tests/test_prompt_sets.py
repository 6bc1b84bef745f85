"""GenEval and DPG-Bench prompt sets on the sampler API, with a stand-in text encoder."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import pixelgen
from pixelgen.eval.prompt_sets import (
    generate_dpg,
    generate_geneval,
    original_noise,
    read_dpg_prompts,
    read_geneval_metadata,
)
from pixelgen.generate import to_uint8
from pixelgen.samplers import build_sampler

SAMPLING = {"sampler": "adams", "sampler_params": {"order": 2, "num_steps": 3, "guidance": 4.0, "timeshift": 3.0}}
PROMPTS = ["a photo of a cat", "two red apples", "a blue car left of a tree"]


class StandInEncoder:
    """Prompts -> (B, 4, 8) embeddings that depend on the text only; counts the prompts it encoded."""

    def __init__(self):
        self.seen: list[str] = []

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        self.seen += prompts
        rows = [torch.randn(4, 8, generator=torch.Generator().manual_seed(zlib.crc32(p.encode()))) for p in prompts]
        return torch.stack(rows)


@pytest.fixture(scope="module")
def text_model():
    model = pixelgen.build_model(
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
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


@pytest.fixture
def metadata(tmp_path):
    path = tmp_path / "evaluation_metadata.jsonl"
    lines = [
        json.dumps({"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": p}) for p in PROMPTS
    ]
    path.write_text("\n".join(lines) + "\n\n")
    return path


def read_png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def expected_image(model, encoder, prompt: str, seed: int) -> np.ndarray:
    """The sampler on the original's noise for this seed, with the empty prompt as the unconditional branch."""
    noise, gen = original_noise(seed, (3, 16, 16))
    sampler = build_sampler(SAMPLING["sampler"], **SAMPLING["sampler_params"])
    with torch.no_grad():
        x = sampler(model, noise[None], encoder([prompt]), encoder([""]), generator=[gen])
    return to_uint8(x)[0].permute(1, 2, 0).numpy()


def test_geneval_layout_images_and_metadata(text_model, metadata, tmp_path):
    encoder = StandInEncoder()
    out = generate_geneval(
        text_model, encoder, metadata, tmp_path / "geneval", batch_size=5, progress=False, **SAMPLING
    )
    assert encoder.seen.count("") == 1  # the unconditional prompt is encoded once per run, not per batch row
    folders = sorted(p.name for p in out.iterdir())
    assert folders == ["00000", "00001", "00002"]
    source_lines = [line for line in metadata.read_text().splitlines() if line]
    for idx, folder in enumerate(folders):
        assert (out / folder / "metadata.jsonl").read_text() == source_lines[idx] + "\n"
        assert sorted(p.name for p in (out / folder / "samples").iterdir()) == [f"{s:05d}.png" for s in range(4)]
    image = read_png(out / "00001" / "samples" / "00002.png")
    assert np.array_equal(image, expected_image(text_model, StandInEncoder(), PROMPTS[1], 2))
    # same seed, different prompt -> different image; same prompt, different seed -> different image
    assert not np.array_equal(image, read_png(out / "00000" / "samples" / "00002.png"))
    assert not np.array_equal(image, read_png(out / "00001" / "samples" / "00003.png"))


def test_geneval_is_batch_independent_and_resumes(text_model, metadata, tmp_path):
    """An image depends on (prompt, seed) only: alone (batch 1) it is exactly the sampler on its own noise; in a
    batch of 12 CPU matrix kernels may round a row differently, so a pixel may move by one level, never more;
    at equal batch size runs are byte-identical; a resumed run makes only the missing image."""
    a = generate_geneval(
        text_model, StandInEncoder(), metadata, tmp_path / "a", batch_size=12, progress=False, **SAMPLING
    )
    b = generate_geneval(
        text_model, StandInEncoder(), metadata, tmp_path / "b", batch_size=1, progress=False, **SAMPLING
    )
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 12
    for f in files:
        prompt, seed = PROMPTS[int(f.parts[0])], int(f.stem)
        assert np.array_equal(read_png(b / f), expected_image(text_model, StandInEncoder(), prompt, seed))
        assert np.abs(read_png(a / f).astype(int) - read_png(b / f).astype(int)).max() <= 1
    again = generate_geneval(
        text_model, StandInEncoder(), metadata, tmp_path / "again", batch_size=12, progress=False, **SAMPLING
    )
    assert all((a / f).read_bytes() == (again / f).read_bytes() for f in files)
    missing = a / "00002" / "samples" / "00001.png"
    missing.unlink()
    encoder = StandInEncoder()
    generate_geneval(text_model, encoder, metadata, tmp_path / "a", batch_size=12, progress=False, **SAMPLING)
    assert encoder.seen.count(PROMPTS[2]) == 1 and PROMPTS[0] not in encoder.seen  # only the missing image was made
    assert missing.read_bytes() == (b / "00002" / "samples" / "00001.png").read_bytes()  # made alone, as in b


def test_dpg_tiles_four_seeds_two_by_two(text_model, tmp_path):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "partiprompts12.txt").write_text("a red bicycle leaning on a wall\nsecond line is ignored\n")
    (prompts / "7.txt").write_text("an owl reading a book")
    items = read_dpg_prompts(prompts)
    assert [(i.key, i.prompt) for i in items] == [
        ("7", "an owl reading a book"),
        ("partiprompts12", "a red bicycle leaning on a wall"),
    ]
    encoder = StandInEncoder()
    out = generate_dpg(text_model, encoder, prompts, tmp_path / "dpg", batch_size=3, progress=False, **SAMPLING)
    assert sorted(p.name for p in out.iterdir()) == ["7.png", "partiprompts12.png"]
    tile = read_png(out / "partiprompts12.png")
    assert tile.shape == (32, 32, 3)
    for seed, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        want = expected_image(text_model, StandInEncoder(), "a red bicycle leaning on a wall", seed)
        assert np.array_equal(tile[r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16], want)
    seen = len(encoder.seen)
    generate_dpg(text_model, encoder, prompts, tmp_path / "dpg", progress=False, **SAMPLING)
    assert len(encoder.seen) == seen  # finished prompts are skipped


def test_input_checks(text_model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"tag": "colors"}\n')
    with pytest.raises(ValueError, match="line 2 has no non-empty"):
        read_geneval_metadata(bad)
    bad.write_text('{"prompt": "ok"}\nnot json\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        read_geneval_metadata(bad)
    bad.write_text("\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        read_geneval_metadata(bad)
    with pytest.raises(FileNotFoundError):
        read_geneval_metadata(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no .txt prompt files"):
        read_dpg_prompts(empty)
    (empty / "x.txt").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        read_dpg_prompts(empty)
    (empty / "x.txt").write_text("fine")
    with pytest.raises(ValueError, match="not a square number"):
        generate_dpg(text_model, StandInEncoder(), empty, tmp_path / "o", seeds=(0, 1, 2), progress=False, **SAMPLING)
    with pytest.raises(ValueError, match=r"\(B, L, D\) float embeddings"):
        generate_dpg(
            text_model, lambda prompts: torch.zeros(len(prompts), 8), empty, tmp_path / "o", progress=False, **SAMPLING
        )
    class_model = pixelgen.build_model(
        "jit",
        input_size=16,
        patch_size=4,
        in_channels=3,
        hidden_size=32,
        depth=1,
        num_heads=2,
        num_classes=3,
        in_context_len=0,
        in_context_start=0,
    )
    with pytest.raises(ValueError, match="text-to-image model"):
        generate_dpg(class_model, StandInEncoder(), empty, tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match="distinct non-negative"):
        generate_dpg(text_model, StandInEncoder(), empty, tmp_path / "o", seeds=(0, 0, 1, 2), progress=False)


def test_sample_command_writes_prompt_sets_with_a_real_text_encoder(metadata, tmp_path):
    """`pixelgen sample --geneval/--dpg` on a saved T2I checkpoint with the tiny random Qwen3 encoder."""
    from pixelgen.cli import main

    model = pixelgen.build_model(
        "jit_t2i",
        input_size=16,
        in_channels=3,
        num_groups=2,
        hidden_size=32,
        num_blocks=1,
        num_text_blocks=1,
        patch_size=8,
        txt_embed_dim=64,
        txt_max_length=8,
        bottleneck_dim=8,
    )
    pixelgen.save_pretrained(model, tmp_path / "t2i")
    common = [
        "--checkpoint",
        str(tmp_path / "t2i"),
        "--text-encoder",
        "qwen3_tiny_random",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(["sample", *common, "--geneval", str(metadata), "--out", str(tmp_path / "g")]) == 0
    assert len(list((tmp_path / "g").rglob("*.png"))) == 12
    prompts = tmp_path / "dpg_prompts"
    prompts.mkdir()
    (prompts / "0.txt").write_text("a cat")
    assert (
        main(["sample", *common, "--dpg", str(prompts), "--out", str(tmp_path / "d"), "--negative-prompt", "blurry"])
        == 0
    )
    assert read_png(tmp_path / "d" / "0.png").shape == (32, 32, 3)
