import os

# Tests never reach a model hub; frozen networks are built with random or test-made weights.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PIXELGEN_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pathlib

import pytest
import torch

# Under pytest-xdist the workers share the cores: one thread each, or they oversubscribe the machine.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _workers)))

DATA = pathlib.Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def golden():
    """(tensors, meta) of the original code's reference outputs."""
    import json

    from safetensors.torch import load_file

    return load_file(str(DATA / "upstream_reference.safetensors")), json.loads(
        (DATA / "upstream_reference.json").read_text()
    )


# -- tiny parts shared by the contract and bad-input tests --------------------------------------------------
# Tiny constructor overrides per backbone family (the registry name of the generic builder). A preset of a
# family is built with its own config updated by these, so every preset runs on CPU in milliseconds.
TINY_BACKBONES = {
    "jit": dict(
        input_size=16,
        patch_size=4,
        hidden_size=32,
        depth=3,
        num_heads=2,
        num_classes=5,
        bottleneck_dim=8,
        in_context_len=2,
        in_context_start=1,
    ),
    "jit_t2i": dict(
        input_size=16,
        patch_size=4,
        hidden_size=32,
        num_blocks=2,
        num_text_blocks=1,
        num_groups=2,
        txt_embed_dim=12,
        txt_max_length=5,
        bottleneck_dim=8,
    ),
}
# Options that make a registered frozen encoder tiny (random weights are asked for by name in the tests).
TINY_ENCODERS = {
    "dinov2": dict(model_overrides=dict(embed_dim=24, depth=2, num_heads=2, init_values=1.0, img_size=98)),
    "lpips": dict(net="squeeze"),
}


def write_image_tree(root: pathlib.Path, classes: int = 2, per_class: int = 2, size: int = 20) -> pathlib.Path:
    """A class-per-folder tree of small noise PNGs."""
    import numpy as np
    from PIL import Image

    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.random.default_rng(10 * c + i).integers(0, 256, (size, size + 3, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


def write_caption_folder(root: pathlib.Path, count: int = 3, size: int = 20) -> pathlib.Path:
    write_image_tree(root, classes=1, per_class=count, size=size)
    for i in range(count):
        (root / "class0" / f"{i}.txt").write_text(f"a caption {i}")
    return root


def write_caption_shard(path: pathlib.Path, count: int = 3, size: int = 20) -> pathlib.Path:
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i in range(count):
            buf = io.BytesIO()
            Image.fromarray(np.full((size, size, 3), 40 * i, dtype=np.uint8)).save(buf, format="PNG")
            for name, data in ((f"s{i:03d}.jpg", buf.getvalue()), (f"s{i:03d}.txt", f"caption {i}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


# Dataset name -> options for a tiny instance, given a temporary folder. A dataset missing here is built with
# resolution=16 alone (and the contract test says to add it here if that fails).
TINY_DATASETS = {
    "demo": lambda tmp: dict(resolution=16, samples_per_class=1),
    "demo_captions": lambda tmp: dict(resolution=16, samples_per_class=1),
    "imagenet": lambda tmp: dict(root=write_image_tree(tmp / "train"), resolution=16),
    "image_folder_flat": lambda tmp: dict(root=write_image_tree(tmp / "flat", classes=1) / "class0", resolution=16),
    "caption_folder": lambda tmp: dict(root=write_caption_folder(tmp / "captions"), resolution=16),
    "webdataset_captions": lambda tmp: dict(
        root=str(write_caption_shard(tmp / "shard-000.tar")), resolution=16, repeat=False, prefix_p=0.0
    ),
}


@pytest.fixture(scope="session")
def tiny_c2i():
    """A tiny class-to-image JiT with a randomised output layer (x̂ depends on the input), in eval mode."""
    from pixelgen import build_model

    torch.manual_seed(0)
    model = build_model("jit", **TINY_BACKBONES["jit"])
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_dino_encoder():
    from pixelgen.encoders import build_encoder

    torch.manual_seed(0)
    return build_encoder("dinov2_vitb14", "random", **TINY_ENCODERS["dinov2"])


@pytest.fixture(scope="session")
def tiny_lpips_encoder():
    from pixelgen.encoders import build_encoder

    torch.manual_seed(0)
    return build_encoder("lpips", "random", **TINY_ENCODERS["lpips"])
