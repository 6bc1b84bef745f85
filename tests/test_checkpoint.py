"""save_pretrained / load_pretrained, and converting original Lightning checkpoints."""

import argparse
import json

import pytest
import torch
from conftest import TINY_BACKBONES

from pixelgen import build_model, convert_checkpoint, load_pretrained, save_pretrained
from pixelgen.checkpoint import infer_backbone_config
from pixelgen.cli import main as cli_main
from pixelgen.utils.io import CheckpointError, load_safetensors

C2I = dict(TINY_BACKBONES["jit"])
T2I = dict(TINY_BACKBONES["jit_t2i"])


def _random_model(arch, config, seed):
    model = build_model(arch, **config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def _inputs(model):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 16, 16, generator=gen)
    t = torch.rand(2, generator=gen)
    if model.cond_kind == "class":
        return x, t, torch.tensor([1, model.num_classes])
    return x, t, torch.randn(2, model.txt_max_length, model.txt_embed_dim, generator=gen)


def _same_outputs(a, b):
    inputs = _inputs(a)
    with torch.no_grad():
        return torch.equal(a(*inputs), b(*inputs))


@pytest.mark.parametrize("arch,config", [("jit", C2I), ("jit_t2i", T2I)])
def test_save_load_round_trip(tmp_path, arch, config):
    model = _random_model(arch, config, seed=1)
    folder = save_pretrained(model, tmp_path / "m")
    meta = json.loads((folder / "config.json").read_text())
    assert meta["arch"] == arch and meta["config"] == model.config and "pixelgen_version" in meta
    assert not list(folder.glob(".*.tmp"))  # atomic writes leave no temporary files
    for source in (folder, folder / "model.safetensors"):
        loaded = load_pretrained(source)
        assert not loaded.training and _same_outputs(model, loaded)
    half = load_pretrained(folder, dtype=torch.bfloat16)
    assert half.pos_embed.dtype == torch.bfloat16 and not half.pos_embed.requires_grad
    bigger = load_pretrained(folder, input_size=24)  # regenerated sin-cos table for a 6x6 grid
    assert bigger.pos_embed.shape == (1, 36, 32)


def test_load_pretrained_errors(tmp_path):
    with pytest.raises(CheckpointError, match="No weights file"):
        load_pretrained(tmp_path)
    folder = save_pretrained(_random_model("jit", C2I, seed=1), tmp_path / "m")
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="No config.json next to"):
        load_pretrained(folder)
    folder = save_pretrained(_random_model("jit", C2I, seed=1), tmp_path / "m2")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_pretrained(folder)
    folder = save_pretrained(_random_model("jit", C2I, seed=1), tmp_path / "m3")
    meta = json.loads((folder / "config.json").read_text())
    meta["config"]["depth"] = 2
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not fit the model described by its config"):
        load_pretrained(folder)
    with pytest.raises(TypeError, match="needs a pixelgen backbone"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path / "x")


def _lightning_checkpoint(path, arch, config, *, with_pickle=False):
    raw, ema = _random_model(arch, config, seed=1), _random_model(arch, config, seed=2)
    state = {f"denoiser.{k}": v for k, v in raw.state_dict().items()}
    state |= {f"ema_denoiser.{k}": v for k, v in ema.state_dict().items()}
    state |= {
        "diffusion_trainer.proj.0.0.weight": torch.randn(16, 32),
        "diffusion_trainer.proj.0.0.bias": torch.randn(16),
    }
    checkpoint = {"state_dict": state, "epoch": 3, "global_step": 1234}
    if with_pickle:
        checkpoint["hyper_parameters"] = argparse.Namespace(lr=1e-4)  # refused by weights_only=True
    torch.save(checkpoint, path)
    return raw, ema, state


@pytest.mark.parametrize("arch,config", [("jit", C2I), ("jit_t2i", T2I)])
def test_convert_round_trip_picks_ema_by_default(tmp_path, arch, config):
    raw, ema, state = _lightning_checkpoint(tmp_path / "last.ckpt", arch, config)
    extra = {"in_context_start": 1} if arch == "jit" else {}
    out = convert_checkpoint(tmp_path / "last.ckpt", tmp_path / "ema", **extra)
    assert not _same_outputs(raw, ema)
    converted = load_pretrained(out)
    assert converted.config == ema.config
    assert _same_outputs(ema, converted)
    assert _same_outputs(
        raw, load_pretrained(convert_checkpoint(tmp_path / "last.ckpt", tmp_path / "raw", weights="raw", **extra))
    )
    projector = load_safetensors(out / "repa_projector.safetensors")
    assert set(projector) == {"0.0.weight", "0.0.bias"}
    assert torch.equal(projector["0.0.weight"], state["diffusion_trainer.proj.0.0.weight"])
    assert json.loads((out / "config.json").read_text())["weights"] == "ema"


def test_convert_needs_what_shapes_cannot_tell(tmp_path):
    _lightning_checkpoint(tmp_path / "last.ckpt", "jit", C2I)
    with pytest.raises(CheckpointError, match="pass in_context_start="):
        convert_checkpoint(tmp_path / "last.ckpt", tmp_path / "out")
    with pytest.raises(CheckpointError, match="The weights have hidden_size=32 but preset 'jit_b_16' says 768"):
        convert_checkpoint(tmp_path / "last.ckpt", tmp_path / "out", preset="jit_b_16")
    with pytest.raises(CheckpointError, match="The weights have depth=3 but the overrides say 4"):
        convert_checkpoint(tmp_path / "last.ckpt", tmp_path / "out", in_context_start=1, depth=4)


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("pixelgen_xl_16", {}),
        ("pixelgen_l_16", {}),
        ("jit_h_16", {}),
        ("jit_b_32", {}),
        ("pixelgen_xxl_16_t2i", {"input_size": 512}),
    ],
)
def test_shapes_of_released_sizes_infer_their_preset(name, overrides):
    model = build_model(name, device="meta", **overrides)
    arch, config = infer_backbone_config(model.state_dict())
    assert (arch, config) == (model.arch, model.config)


def test_convert_refuses_pickles_and_broken_files(tmp_path):
    _lightning_checkpoint(tmp_path / "pickled.ckpt", "jit", C2I, with_pickle=True)
    with pytest.raises(CheckpointError, match="trust_pickle=True"):
        convert_checkpoint(tmp_path / "pickled.ckpt", tmp_path / "out", in_context_start=1)
    convert_checkpoint(tmp_path / "pickled.ckpt", tmp_path / "out", in_context_start=1, trust_pickle=True)

    data = (tmp_path / "pickled.ckpt").read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        convert_checkpoint(tmp_path / "truncated.ckpt", tmp_path / "out2")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        convert_checkpoint(tmp_path / "empty.ckpt", tmp_path / "out2")
    torch.save({"state_dict": {"denoiser.pos_embed": torch.zeros(1)}}, tmp_path / "raw_only.ckpt")
    with pytest.raises(CheckpointError, match="no 'ema_denoiser.\\*' weights \\(use weights='raw'"):
        convert_checkpoint(tmp_path / "raw_only.ckpt", tmp_path / "out2")
    with pytest.raises(ValueError, match="weights must be 'ema' or 'raw'"):
        convert_checkpoint(tmp_path / "raw_only.ckpt", tmp_path / "out2", weights="best")


def test_convert_command(tmp_path, capsys):
    _lightning_checkpoint(tmp_path / "pickled.ckpt", "jit", C2I, with_pickle=True)
    args = ["convert", str(tmp_path / "pickled.ckpt"), str(tmp_path / "out"), "--set", "in_context_start=1"]
    assert cli_main(args) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert cli_main(args + ["--trust-pickle", "--weights", "raw"]) == 0
    assert "arch=jit weights=raw" in capsys.readouterr().out
    assert load_pretrained(tmp_path / "out").config["in_context_start"] == 1
