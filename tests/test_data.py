"""Class-conditional data: ADM crop, samples and collate, ImageNet folder, demo set, epoch sampler, loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pixelgen.data import (
    DemoCaptionDataset,
    DemoDataset,
    EpochBatchSampler,
    ImageFolderDataset,
    adm_center_crop,
    adm_crop_plan,
    build_dataset,
    build_loader,
    collate,
    demo_captions,
    list_datasets,
    make_sample,
)
from pixelgen.data import demo as demo_module


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# -- ADM centre crop ------------------------------------------------------------------------------------
def test_adm_plan_counts_halvings_on_a_hand_made_case():
    # 1000x600 -> 64: the short side 600, 300, 150 is >= 128, so three halvings give 125x75; the bicubic
    # resize gives round(125 * 64 / 75) = 107 by 64, and the centre crop starts at (107 - 64) // 2 = 21.
    plan = adm_crop_plan(1000, 600, 64)
    assert plan.halvings == 3
    assert plan.halved == (125, 75)
    assert plan.resized == (107, 64)
    assert plan.offset == (21, 0)
    # A small portrait image is only upscaled: 40x50 -> 64 gives 64x80 and a vertical offset of 8.
    small = adm_crop_plan(40, 50, 64)
    assert (small.halvings, small.resized, small.offset) == (0, (64, 80), (0, 8))


def test_adm_crop_matches_a_direct_rederivation():
    image = noise_image(1000, 600)
    expected = image
    for size in [(500, 300), (250, 150), (125, 75)]:
        expected = expected.resize(size, resample=Image.BOX)
    expected = expected.resize((107, 64), resample=Image.BICUBIC).crop((21, 0, 85, 64))
    out = adm_center_crop(image, 64)
    assert out.size == (64, 64)
    assert np.array_equal(np.asarray(out), np.asarray(expected))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 700), st.integers(1, 700), st.integers(1, 96))
def test_adm_crop_output_size_is_exact(width, height, size):
    plan = adm_crop_plan(width, height, size)
    assert min(plan.resized) == size
    assert min(plan.halved) < 2 * size
    assert 0 <= plan.offset[0] and plan.offset[0] + size <= plan.resized[0]
    assert 0 <= plan.offset[1] and plan.offset[1] + size <= plan.resized[1]
    if width * height <= 200 * 200:  # real pixels on the cheaper cases
        assert adm_center_crop(noise_image(width, height), size).size == (size, size)


def test_adm_crop_rejects_bad_inputs():
    with pytest.raises(TypeError, match="integer number of pixels"):
        adm_center_crop(noise_image(10, 10), 8.0)
    with pytest.raises(TypeError, match="PIL image"):
        adm_center_crop(np.zeros((10, 10, 3)), 8)
    with pytest.raises(ValueError, match="positive"):
        adm_crop_plan(10, 10, 0)


# -- samples and collate ------------------------------------------------------------------------------
def test_sample_ranges_and_flip():
    image = noise_image(8, 8)
    sample = make_sample(image, label=3)
    assert sample["image"].shape == sample["raw"].shape == (3, 8, 8)
    assert sample["raw"].min() >= 0 and sample["raw"].max() <= 1
    assert torch.allclose(sample["image"], sample["raw"] * 2 - 1)
    assert sample["label"] == 3
    expected = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    assert torch.equal(sample["raw"], expected)
    assert torch.equal(make_sample(image, flip=True)["raw"], expected.flip(-1))
    # NCHW-contiguous (not HWC strides carried through .float()): channels-last batches slowed training 10-20x.
    assert sample["image"].is_contiguous() and sample["raw"].is_contiguous()
    assert collate([sample, sample])["image"].is_contiguous()


def test_collate_stacks_labels_and_lists_captions():
    labelled = collate([make_sample(noise_image(4, 4, s), label=s) for s in range(3)])
    assert labelled["image"].shape == (3, 3, 4, 4) and labelled["raw"].shape == (3, 3, 4, 4)
    assert labelled["label"].dtype == torch.long and labelled["label"].tolist() == [0, 1, 2]
    captioned = collate([make_sample(noise_image(4, 4), caption=c) for c in ["a cat", "a dog"]])
    assert captioned["caption"] == ["a cat", "a dog"]
    with pytest.raises(ValueError, match="empty"):
        collate([])
    with pytest.raises(ValueError, match="share their keys"):
        collate([make_sample(noise_image(4, 4), label=0), make_sample(noise_image(4, 4), caption="x")])


# -- ImageNet folder ----------------------------------------------------------------------------------
@pytest.fixture()
def image_tree(tmp_path):
    root = tmp_path / "train"
    sizes = {"n02": [(50, 40), (40, 70)], "n01": [(64, 64)], "n03": [(90, 33)]}
    for i, (cls, dims) in enumerate(sizes.items()):
        (root / cls / "nested").mkdir(parents=True)
        for j, (w, h) in enumerate(dims):
            folder = root / cls / ("nested" if j else "")
            noise_image(w, h, seed=10 * i + j).save(folder / f"img{j}.png")
    (root / "n01" / "notes.txt").write_text("not an image")
    return root


def test_imagenet_folder_labels_and_crop(image_tree):
    data = build_dataset("imagenet", root=image_tree, resolution=16)
    assert isinstance(data, ImageFolderDataset)
    assert data.classes == ["n01", "n02", "n03"] and data.num_classes == 3
    assert len(data) == 4  # the .txt file is not an image; the nested folder is searched
    assert [label for _, label in data.samples] == [0, 1, 1, 2]
    for index, (path, label) in enumerate(data.samples):
        sample = data[index]
        assert sample["label"] == label
        assert sample["image"].shape == (3, 16, 16)
        expected = make_sample(adm_center_crop(Image.open(path).convert("RGB"), 16))
        assert torch.equal(sample["raw"], expected["raw"])


def test_imagenet_folder_errors(tmp_path, image_tree):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        ImageFolderDataset(image_tree / "n01" / "img0.png")
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolderDataset(image_tree / "n02" / "nested")
    with pytest.raises(ValueError, match="splits train rather than class folders"):
        ImageFolderDataset(tmp_path)  # the dataset root instead of its train split
    empty = tmp_path / "empty"
    (empty / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        ImageFolderDataset(empty)
    with pytest.raises(TypeError, match="integer number of pixels"):
        ImageFolderDataset(image_tree, resolution="256")
    (image_tree / "n04").mkdir()
    with pytest.raises(ValueError, match="without images: n04"):
        ImageFolderDataset(image_tree)


# -- demo sets ----------------------------------------------------------------------------------------
def test_demo_set_shapes_labels_and_determinism():
    data = build_dataset("demo", resolution=16, samples_per_class=6)
    assert {"demo", "demo_captions", "imagenet", "caption_folder", "webdataset_captions"} <= set(list_datasets())
    assert len(data) == 6 * data.num_classes and len(data.class_names) == data.num_classes == 10
    batch = collate([data[i] for i in range(len(data))])
    assert batch["image"].shape == (len(data), 3, 16, 16)
    assert batch["raw"].min() >= 0 and batch["raw"].max() <= 1
    assert torch.allclose(batch["image"], batch["raw"] * 2 - 1)
    assert sorted(set(batch["label"].tolist())) == list(range(10))
    assert batch["raw"].std() > 0.1  # real photographs, not blank crops
    demo_module._render.cache_clear()  # rebuild from scratch: same pixels
    again = DemoDataset(16, samples_per_class=6)
    assert torch.equal(again.pixels, data.pixels)
    assert not torch.equal(DemoDataset(16, samples_per_class=6, seed=1).pixels, data.pixels)
    assert "cat" in data.describe() and "16px" in data.describe()


def test_demo_captions_variant():
    data = DemoCaptionDataset(resolution=8, samples_per_class=2)
    assert data.captions == demo_captions() and len(set(data.captions)) == 10
    sample = data[4]
    assert set(sample) == {"image", "raw", "caption"}
    assert sample["caption"] == data.captions[2] == "a photo of a cat"
    assert data.class_names[2] in data.describe()


def test_demo_set_input_checks():
    with pytest.raises(TypeError, match="integer number of pixels"):
        DemoDataset("32")
    with pytest.raises(ValueError, match="between 8 and 512"):
        DemoDataset(4)
    with pytest.raises(ValueError, match="samples_per_class"):
        DemoDataset(8, samples_per_class=0)
    with pytest.raises(IndexError, match="out of range"):
        DemoDataset(8, samples_per_class=1)[10]
    with pytest.raises(ValueError, match="0 < low <= high <= 1"):
        DemoDataset(8, crop_scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="0 < low <= high <= 1"):
        DemoDataset(8, crop_scale=(0.8, 0.5))
    with pytest.raises(TypeError, match="pair of numbers"):
        DemoDataset(8, crop_scale=0.5)


def test_demo_crop_scale_bounds_the_variety_of_a_class():
    def spread(data):  # mean per-pixel standard deviation within each class
        x = data.pixels.float().view(data.num_classes, data.samples_per_class, -1)
        return float(x.std(dim=1).mean())

    wide = DemoDataset(16, samples_per_class=6)
    whole = DemoDataset(16, samples_per_class=6, crop_scale=[1.0, 1.0])  # JSON configs give lists
    assert whole.crop_scale == (1.0, 1.0)
    assert spread(whole) < 0.5 * spread(wide)
    # A square photograph cropped whole is the same image every time.
    astronaut = whole.pixels[: whole.samples_per_class]
    assert all(torch.equal(astronaut[0], a) for a in astronaut)


# -- epoch sampler ------------------------------------------------------------------------------------
def epoch_batches(n, world, batch, epoch=0, **kw):
    """Per rank: the list of batches of one epoch."""
    per_rank = []
    for rank in range(world):
        sampler = EpochBatchSampler(n, batch, rank=rank, world_size=world, **kw)
        sampler.set_epoch(epoch)
        per_rank.append(list(sampler))
    return per_rank


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4).flatmap(lambda w: st.tuples(st.just(w), st.integers(w, 120), st.integers(1, 7))))
def test_epoch_sampler_covers_each_index_once(args):
    world, n, batch = args
    per_rank = epoch_batches(n, world, batch)
    steps = {len(batches) for batches in per_rank}
    assert len(steps) == 1  # every rank takes the same number of steps (DDP)
    flat = [i for batches in per_rank for b in batches for i in b]
    assert sorted(flat) == list(range(n))  # union is every index exactly once, so slices are disjoint
    for step in range(steps.pop()):
        sizes = [len(batches[step]) for batches in per_rank]
        assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1  # no empty batch; uneven by at most one
        assert max(sizes) <= batch + 1
    if n % (world * batch) == 0 or n % (world * batch) >= world:  # no merged tail: same global batches
        single = epoch_batches(n, 1, world * batch)[0]
        for step, global_batch in enumerate(single):
            assert [i for batches in per_rank for i in batches[step]] == global_batch


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 4), st.integers(0, 19))
def test_epoch_sampler_drop_last_gives_equal_full_batches(world, batch, full_steps, extra):
    n = full_steps * world * batch + extra % (world * batch)
    per_rank = epoch_batches(n, world, batch, drop_last=True)
    flat = [i for batches in per_rank for b in batches for i in b]
    assert len(flat) == len(set(flat)) == (n // (world * batch)) * world * batch
    assert {len(b) for batches in per_rank for b in batches} == {batch}


def test_epoch_sampler_orders_differ_between_epochs_and_match_distributed_sampler():
    orders = [epoch_batches(50, 1, 50, epoch=e)[0][0] for e in range(3)]
    assert orders[0] != orders[1] != orders[2] and orders[0] != orders[2]
    reference = torch.utils.data.DistributedSampler(range(50), num_replicas=1, rank=0, shuffle=True, seed=0)
    reference.set_epoch(2)
    assert orders[2] == list(reference)
    assert epoch_batches(10, 1, 10, shuffle=False)[0][0] == list(range(10))


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 3).flatmap(
        lambda w: st.tuples(st.just(w), st.integers(w, 60), st.integers(1, 6), st.integers(0, 30))
    )
)
def test_epoch_sampler_resumes_mid_epoch_exactly(args):
    world, n, batch, stop = args
    for rank in range(world):
        straight = EpochBatchSampler(n, batch, rank=rank, world_size=world, seed=3)
        expected = list(straight) + list(_next_epoch(straight))
        interrupted = EpochBatchSampler(n, batch, rank=rank, world_size=world, seed=3)
        stop_at = stop % (len(expected) + 1)
        taken = []
        while len(taken) < stop_at:  # deliver batches one by one, as the loader does
            batch_indices = list(interrupted)[0]
            interrupted.advance()
            taken.append(batch_indices)
        resumed = EpochBatchSampler(n, batch, rank=rank, world_size=world, seed=3)
        resumed.load_state_dict(interrupted.state_dict())
        rest = []
        while len(taken) + len(rest) < len(expected):
            current = list(resumed)
            rest += current
            for _ in current:
                resumed.advance()
        assert taken + rest == expected


def _next_epoch(sampler):
    copy = EpochBatchSampler(
        sampler.num_samples, sampler.batch_size, rank=sampler.rank, world_size=sampler.world_size, seed=sampler.seed
    )
    copy.set_epoch(sampler.epoch + 1)
    return list(copy)


def test_epoch_sampler_resume_with_another_world_size_still_covers_the_epoch_once():
    old = [EpochBatchSampler(40, 3, rank=r, world_size=2) for r in range(2)]
    seen = []
    for _ in range(3):
        for sampler in old:
            seen += list(sampler)[0]
            sampler.advance()
    new = [EpochBatchSampler(40, 5, rank=r, world_size=3) for r in range(3)]
    for sampler in new:
        sampler.load_state_dict(old[0].state_dict())
        seen += [i for b in sampler for i in b]
    assert sorted(seen) == list(range(40))


def test_epoch_sampler_input_checks():
    with pytest.raises(ValueError, match="rank must be below world_size 2"):
        EpochBatchSampler(10, 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="fewer than the 4 ranks"):
        EpochBatchSampler(3, 1, rank=0, world_size=4)
    with pytest.raises(ValueError, match="at least world_size x batch_size = 8"):
        EpochBatchSampler(6, 4, rank=0, world_size=2, drop_last=True)
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        EpochBatchSampler(10, 2.0, rank=0, world_size=1)
    sampler = EpochBatchSampler(10, 2, rank=0, world_size=1)
    with pytest.raises(ValueError, match="dataset of 12 samples"):
        sampler.load_state_dict({**sampler.state_dict(), "num_samples": 12})
    with pytest.raises(KeyError, match="no 'consumed' entry"):
        sampler.load_state_dict({"epoch": 0})


def test_epoch_sampler_reads_rank_from_torchrun_environment(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    sampler = EpochBatchSampler(10, 2)
    assert (sampler.rank, sampler.world_size) == (1, 2)


# -- loader -------------------------------------------------------------------------------------------
def test_loader_resumes_with_the_same_batches_and_rolls_epochs():
    data = DemoDataset(8, samples_per_class=3)  # 30 samples, 4 steps of 8 per epoch (the last has 6)
    straight = build_loader(data, 8, num_workers=0, seed=5)
    assert len(straight) == 4
    expected = [b["label"].tolist() for b in straight] + [b["label"].tolist() for b in straight]
    assert straight.state_dict()["epoch"] == 2 and straight.state_dict()["consumed"] == 0
    first = build_loader(data, 8, num_workers=0, seed=5)
    got = []
    for batch in first:
        got.append(batch["label"].tolist())
        if len(got) == 3:
            break
    state = first.state_dict()
    assert state["epoch"] == 0 and state["consumed"] == 24
    resumed = build_loader(data, 8, num_workers=0, seed=5)
    resumed.load_state_dict(state)
    assert len(resumed) == 1
    got += [b["label"].tolist() for b in resumed] + [b["label"].tolist() for b in resumed]
    assert got == expected


def test_loader_with_workers_and_checks():
    data = DemoDataset(8, samples_per_class=2)
    loader = build_loader(data, 5, num_workers=2, seed=0)
    assert loader.loader.persistent_workers and loader.loader.prefetch_factor == 8
    assert loader.loader.pin_memory == torch.cuda.is_available()
    labels = sorted(i for b in loader for i in b["label"].tolist())
    assert labels == sorted(data.label(i) for i in range(len(data)))
    # Stopping early and iterating again continues from the position, although workers prefetched ahead.
    reference = build_loader(data, 5, num_workers=0, seed=0)
    reference.sampler.set_epoch(1)  # the worker loader has finished epoch 0
    expected = [b["label"].tolist() for b in reference]
    got = []
    for batch in loader:
        got.append(batch["label"].tolist())
        break
    got += [b["label"].tolist() for b in loader]
    assert got == expected
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        build_loader(data, 0)
    with pytest.raises(ValueError, match="the dataset has 20 samples and batch_size is 4"):
        build_loader(data, 4, sampler=EpochBatchSampler(20, 5, rank=0, world_size=1))
