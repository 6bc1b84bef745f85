"""ImageFolder robustness: symlink loops, unreadable images (skipped without moving other indices, exact
resume), decompression bombs, 16-bit PNGs, tiny images."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from pixelgen.data import BadImageLimitError, ImageFolderDataset, adm_center_crop, build_loader, make_sample


def _noise(size: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "train"
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(4):
            _noise(20, 10 * c + i).save(root / f"c{c}" / f"{i}.png")
    return root


def _expected(path, size=16):
    return make_sample(adm_center_crop(Image.open(path).convert("RGB"), size))["raw"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlink_loops_do_not_index_files_again(tree):
    os.symlink(tree / "c0", tree / "c0" / "self")  # a folder linking to itself
    os.symlink(tree, tree / "c1" / "root")  # a link back to the dataset root
    (tree / "c2" / "sub").mkdir()
    os.symlink(tree / "c2", tree / "c2" / "sub" / "up")  # a loop two levels down
    data = ImageFolderDataset(tree, resolution=16)
    assert len(data) == 12 and [label for _, label in data.samples] == [0] * 4 + [1] * 4 + [2] * 4
    assert len({os.path.realpath(p) for p, _ in data.samples}) == 12
    assert data.loop_skipped > 0


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlinked_class_folders_elsewhere_are_still_followed(tmp_path, tree):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    _noise(20, 99).save(outside / "x.png")
    os.symlink(outside, tree / "c1" / "more")
    data = ImageFolderDataset(tree, resolution=16)
    assert len(data) == 13 and data.loop_skipped == 0


def test_unreadable_image_is_replaced_by_the_next_without_moving_others(tree, caplog):
    bad = tree / "c1" / "1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))  # a truncated PNG
    data = ImageFolderDataset(tree, resolution=16)
    bad_index = [p for p, _ in data.samples].index(bad)
    with caplog.at_level(logging.WARNING, logger="pixelgen.data.folders"):
        for index, (path, label) in enumerate(data.samples):
            sample = data[index]
            source = data.samples[index + 1] if index == bad_index else (path, label)
            assert sample["label"] == source[1]
            assert torch.equal(sample["raw"], _expected(source[0]))
        data[bad_index]  # asked again: not re-read, not counted again
    assert data.stats()["corrupt"] == 1
    assert sum("unreadable image" in r.getMessage() for r in caplog.records) == 1


def test_too_many_bad_images_stop_with_one_sentence(tree):
    for i in range(3):
        (tree / "c0" / f"{i}.png").write_bytes(b"not an image")
    data = ImageFolderDataset(tree, resolution=16, max_bad_images=2)
    with pytest.raises(BadImageLimitError, match=r"3 images under .* could not be read, more than max_bad_images=2"):
        data[0]
    assert ImageFolderDataset(tree, resolution=16, max_bad_images=None)[0]["label"] == 0
    with pytest.raises(TypeError, match="max_bad_images must be an integer or None, got bool"):
        ImageFolderDataset(tree, resolution=16, max_bad_images=True)


def test_decompression_bomb_is_skipped_like_a_bad_image(tree):
    Image.new("RGB", (300, 300)).save(tree / "c2" / "0.png")
    data = ImageFolderDataset(tree, resolution=16, max_pixels=200 * 200)
    index = [p for p, _ in data.samples].index(tree / "c2" / "0.png")
    assert torch.equal(data[index]["raw"], _expected(tree / "c2" / "1.png"))
    assert data.stats()["corrupt"] == 1


def test_sixteen_bit_png_is_scaled_not_saturated(tree):
    ramp = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (32, 1))
    Image.fromarray(ramp).save(tree / "c0" / "0.png")
    assert Image.open(tree / "c0" / "0.png").mode.startswith("I")
    raw = ImageFolderDataset(tree, resolution=32)[0]["raw"]
    assert abs(raw.mean().item() - 0.5) < 0.02  # a plain RGB conversion gives ~1.0 (white)
    assert raw[:, :, 0].max() < 0.05 and raw[:, :, -1].min() > 0.95


def test_images_below_the_minimum_size_warn_once(tree, caplog):
    Image.new("RGB", (1, 1), (200, 10, 10)).save(tree / "c0" / "0.png")
    data = ImageFolderDataset(tree, resolution=16, min_image_size=8)
    with caplog.at_level(logging.WARNING, logger="pixelgen.data.folders"):
        data[0], data[0]
    assert sum("below min_image_size=8" in r.getMessage() for r in caplog.records) == 1
    assert data.stats()["small"] == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pixelgen.data.folders"):
        ImageFolderDataset(tree, resolution=16, min_image_size=1)[0]
    assert not caplog.records


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_image_and_exact_resume(tree, num_workers):
    """A run interrupted after two batches and resumed from its loader state sees exactly the batches of an
    uninterrupted run, although one image is unreadable."""
    (tree / "c1" / "2.png").write_bytes(b"garbage")

    def loader():
        data = ImageFolderDataset(tree, resolution=16)
        return build_loader(data, batch_size=3, num_workers=num_workers, seed=5, rank=0, world_size=1)

    full = loader()
    reference = [b["raw"] for _ in range(2) for b in full]  # two epochs
    assert full.dataset.stats()["corrupt"] == 1
    first = loader()
    seen, state = [], None
    for i, batch in enumerate(first):
        seen.append(batch["raw"])
        if i == 1:
            state = first.state_dict()
            break
    resumed = loader()
    resumed.load_state_dict(state)
    seen += [b["raw"] for b in resumed] + [b["raw"] for b in resumed]
    seen = seen[: len(reference)]
    assert len(seen) == len(reference)
    assert all(torch.equal(a, b) for a, b in zip(seen, reference))


def test_flat_folder_skips_unreadable_images_the_same_way(tree):
    from pixelgen.data import build_dataset

    (tree / "c0" / "1.png").write_bytes(b"garbage")
    data = build_dataset("image_folder_flat", root=tree / "c0", resolution=16)
    assert torch.equal(data[1]["raw"], _expected(tree / "c0" / "2.png")) and data[1]["label"] == 0
    assert data.stats()["corrupt"] == 1
