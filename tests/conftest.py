import os

# Tests never reach a model hub; frozen networks are built with random or test-made weights.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PIXELGEN_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pathlib

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

DATA = pathlib.Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def golden():
    """(tensors, meta) of the original code's reference outputs."""
    import json

    from safetensors.torch import load_file

    return load_file(str(DATA / "upstream_reference.safetensors")), json.loads(
        (DATA / "upstream_reference.json").read_text()
    )
