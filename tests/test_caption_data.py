"""Caption data: webdataset shards split across ranks and workers, skipped samples, prefixes, caption folders."""

from __future__ import annotations

import io
import itertools
import random
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from pixelgen.data import (
    CAPTION_PREFIXES,
    CaptionFolderDataset,
    CaptionPrefixAugment,
    CaptionShardDataset,
    adm_center_crop,
    build_dataset,
    build_loader,
    expand_shards,
    make_sample,
    resize_center_crop,
)

RES = 16


def image_bytes(width: int, height: int, seed: int, fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def write_tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture()
def shards(tmp_path):
    """Six shards of three samples; captions say where each sample lives. Shard 1 holds a corrupt image,
    shard 2 an image below the resolution, shard 3 uses the fallback keys, shard 4 lacks one caption."""
    folder = tmp_path / "shards"
    folder.mkdir()
    valid = set()
    for s in range(6):
        members = {}
        for i in range(3):
            key, caption = f"s{s}_{i:02d}", f"shard {s} sample {i}"
            image = image_bytes(24 + i, 20, seed=10 * s + i)
            image_key, caption_key = ("output_image", "input_prompt") if s == 3 else ("jpg", "txt")
            if (s, i) == (1, 1):
                image = b"this is not a jpeg"
            if (s, i) == (2, 0):
                image = image_bytes(RES - 1, 40, seed=0)
            members[f"{key}.{image_key}"] = image
            if (s, i) != (4, 2):
                members[f"{key}.{caption_key}"] = caption.encode()
            if (s, i) not in {(1, 1), (2, 0), (4, 2)}:
                valid.add(caption)
        write_tar(folder / f"shard-{s:03d}.tar", members)
    return folder, valid


def captions_of(dataset) -> list[str]:
    return [sample["caption"] for sample in dataset]


def test_two_ranks_see_disjoint_shards_and_skip_bad_samples(shards):
    folder, valid = shards
    ranks = [
        CaptionShardDataset(folder, RES, rank=r, world_size=2, repeat=False, prefix_p=0.0, shuffle_buffer=4)
        for r in range(2)
    ]
    seen = [captions_of(d) for d in ranks]
    assert set(seen[0]).isdisjoint(seen[1])
    shards_of = [{c.split()[1] for c in captions} for captions in seen]
    assert shards_of[0].isdisjoint(shards_of[1]) and len(shards_of[0]) == len(shards_of[1]) == 3
    assert sorted(seen[0] + seen[1]) == sorted(valid)  # every good sample once; the three bad ones skipped
    totals = {k: ranks[0].stats()[k] + ranks[1].stats()[k] for k in ranks[0].stats()}
    assert totals == {"samples": len(valid), "corrupt": 1, "too_small": 1, "missing": 1, "corrupt_shards": 0}


def test_original_layout_gives_every_rank_every_shard(shards):
    folder, valid = shards
    ranks = [
        CaptionShardDataset(folder, RES, rank=r, world_size=2, split_by_node=False, repeat=False, prefix_p=0.0)
        for r in range(2)
    ]
    assert [sorted(captions_of(d)) for d in ranks] == [sorted(valid)] * 2


def test_workers_split_a_ranks_shards_and_counters_reach_the_main_process(shards):
    folder, valid = shards
    data = CaptionShardDataset(folder, RES, rank=0, world_size=1, repeat=False, prefix_p=0.0, shuffle_buffer=3)
    loader = build_loader(data, 4, num_workers=2, persistent_workers=False, prefetch_factor=2)
    captions = [c for batch in loader for c in batch["caption"]]
    assert sorted(captions) == sorted(valid)
    stats = data.stats()
    assert (stats["samples"], stats["corrupt"], stats["too_small"], stats["missing"]) == (len(valid), 1, 1, 1)
    assert sorted(data.shards_for(0, 0, 2) + data.shards_for(0, 1, 2)) == data.shards


def test_shard_order_is_shuffled_per_epoch_and_stream_repeats(shards):
    folder, valid = shards
    data = CaptionShardDataset(folder, RES, rank=0, world_size=1, prefix_p=0.0, shuffle_buffer=0)
    assert sorted(data.shards_for(0)) == sorted(data.shards_for(1)) == data.shards
    assert any(data.shards_for(e) != data.shards_for(0) for e in range(1, 4))
    # repeat=True: the stream goes on; here three epochs of it.
    stream_caps = [s["caption"] for s in itertools.islice(iter(data), 3 * len(valid))]
    assert sorted(stream_caps) == sorted(list(valid) * 3)
    assert stream_caps[: len(valid)] != stream_caps[len(valid) : 2 * len(valid)]
    again = CaptionShardDataset(folder, RES, rank=0, world_size=1, prefix_p=0.0, shuffle_buffer=0)
    assert [s["caption"] for s in itertools.islice(iter(again), len(valid))] == stream_caps[: len(valid)]


def test_samples_get_the_adm_crop(tmp_path):
    image = image_bytes(40, 24, seed=3, fmt="PNG")
    write_tar(tmp_path / "one.tar", {"a.jpg": image, "a.txt": b"  a test caption \n"})
    (sample,) = list(CaptionShardDataset(tmp_path / "one.tar", RES, repeat=False, prefix_p=0.0, rank=0, world_size=1))
    expected = make_sample(adm_center_crop(Image.open(io.BytesIO(image)).convert("RGB"), RES))
    assert torch.equal(sample["raw"], expected["raw"]) and torch.equal(sample["image"], expected["image"])
    assert sample["caption"] == "a test caption"


def test_corrupt_and_truncated_shards_are_counted_not_fatal(shards, tmp_path):
    folder, _ = shards
    (folder / "garbage.tar").write_bytes(b"definitely not a tar file" * 40)
    full = (folder / "shard-000.tar").read_bytes()
    (folder / "truncated.tar").write_bytes(full[: len(full) // 2])
    data = CaptionShardDataset(folder, RES, rank=0, world_size=1, repeat=False, prefix_p=0.0)
    captions = captions_of(data)
    assert data.stats()["corrupt_shards"] == 2
    assert len(captions) == 15 + 1  # the good samples, plus the complete one before the truncation
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.tar").write_bytes(b"junk")
    with pytest.raises(RuntimeError, match="None of the 1 shards"):
        list(CaptionShardDataset(only_bad, RES, rank=0, world_size=1))


def test_prefixes_in_the_stream(tmp_path):
    long_caption = " ".join(["word"] * 30)
    members = {}
    for i in range(200):
        members[f"{i:03d}.jpg"] = image_bytes(RES, RES, seed=i)
        members[f"{i:03d}.txt"] = (long_caption if i % 2 else f"short caption {i}").encode()
    write_tar(tmp_path / "p.tar", members)
    data = CaptionShardDataset(tmp_path / "p.tar", RES, rank=0, world_size=1, repeat=False, prefix_p=1.0, seed=1)
    for caption in captions_of(data):
        if caption.startswith("word"):
            assert caption == long_caption  # 30 words: never prefixed
        else:
            assert caption.startswith(CAPTION_PREFIXES) and caption.endswith(
                tuple(f"short caption {i}" for i in range(200))
            )
    untouched = CaptionShardDataset(tmp_path / "p.tar", RES, rank=0, world_size=1, repeat=False, prefix_p=0.0)
    assert not any(c.startswith(CAPTION_PREFIXES) for c in captions_of(untouched))


def test_prefix_augmentation_probability_and_conditions():
    augment = CaptionPrefixAugment()
    assert (augment.p, augment.max_words, len(augment.prefixes)) == (0.5, 30, 7)
    rng = random.Random(0)
    outputs = [augment("a dog on a beach", rng) for _ in range(4000)]
    prefixed = [o for o in outputs if o != "a dog on a beach"]
    assert abs(len(prefixed) / len(outputs) - 0.5) < 0.04  # 5 standard deviations
    used = {o[: -len("a dog on a beach")] for o in prefixed}
    assert used == set(CAPTION_PREFIXES)
    assert [augment("a dog on a beach", random.Random(7)) for _ in range(5)] == [
        augment("a dog on a beach", random.Random(7)) for _ in range(5)
    ]
    words_29, words_30 = " ".join(["w"] * 29), " ".join(["w"] * 30)
    always = CaptionPrefixAugment(p=1.0)
    assert always(words_29, rng) != words_29 and always(words_30, rng) == words_30
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        CaptionPrefixAugment(p=1.5)


def test_shard_sources_and_checks(shards, tmp_path):
    folder, _ = shards
    write_tar(tmp_path / "extra.tar", {})
    with tarfile.open(folder / "nested.tar.gz", "w:gz"):
        pass
    assert len(expand_shards(folder)) == 7  # a folder means every .tar / .tar.gz below it
    assert expand_shards(str(folder / "shard-{000..002}.tar")) == [str(folder / f"shard-{i:03d}.tar") for i in range(3)]
    assert len(expand_shards([str(folder / "shard-00[45].tar"), tmp_path / "extra.tar"])) == 3
    with pytest.raises(FileNotFoundError, match="No shards matched"):
        expand_shards(str(tmp_path / "nothing-*.tar"))
    with pytest.raises(ValueError, match="No shards given"):
        expand_shards([])
    with pytest.raises(ValueError, match="Only 3 shards for 4 ranks"):
        CaptionShardDataset(str(folder / "shard-00[012].tar"), RES, rank=0, world_size=4)
    with pytest.raises(TypeError, match="integer number of pixels"):
        CaptionShardDataset(folder, 256.0, rank=0, world_size=1)
    assert isinstance(build_dataset("webdataset_captions", root=folder, resolution=RES), CaptionShardDataset)


# -- caption folder -------------------------------------------------------------------------------------
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}


def test_caption_folder_pairs_images_with_their_captions(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    places = {
        "red": tmp_path / "a.png",
        "green": tmp_path / "sub" / "b.jpg",
        "blue": tmp_path / "sub" / "deeper" / "c.JPEG",
    }
    for colour, path in places.items():
        Image.new("RGB", (40, 30), COLOURS[colour]).save(path, format="PNG" if path.suffix == ".png" else "JPEG")
        path.with_suffix(".txt").write_text(f"a {colour} square\n")
    Image.new("RGB", (40, 30), COLOURS["white"]).save(tmp_path / "no_caption.png")
    data = build_dataset("caption_folder", root=tmp_path, resolution=RES)
    assert isinstance(data, CaptionFolderDataset) and len(data) == 3 and data.unpaired == 1
    for i in range(len(data)):
        sample = data[i]
        colour = sample["caption"].split()[1]
        assert sample["image"].shape == (3, RES, RES)
        mean = sample["raw"].mean(dim=(1, 2))
        assert torch.allclose(mean, torch.tensor(COLOURS[colour], dtype=torch.float) / 255, atol=0.03)
    expected = make_sample(resize_center_crop(Image.open(places["red"]).convert("RGB"), RES))
    red = next(data[i] for i in range(3) if data[i]["caption"] == "a red square")
    assert torch.equal(red["raw"], expected["raw"])


def test_caption_folder_skips_corrupt_images_and_checks_input(tmp_path):
    (tmp_path / "a.png").write_bytes(b"broken")
    (tmp_path / "a.txt").write_text("broken one")
    Image.new("RGB", (20, 20), COLOURS["red"]).save(tmp_path / "b.png")
    (tmp_path / "b.txt").write_text("a red square")
    data = CaptionFolderDataset(tmp_path, resolution=RES)
    assert data[0]["caption"] == "a red square" and data.stats() == {"corrupt": 1}
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image .* with a caption file"):
        CaptionFolderDataset(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CaptionFolderDataset(tmp_path / "nope")
