"""Bad inputs at every entry point, each answered with one true sentence.

Every case is a call that must fail with a ``ValueError`` / ``TypeError`` (or a subclass such as
``CheckpointError``, or ``FileNotFoundError``) whose message is one sentence naming the argument and what was
expected. Command-line cases must exit with code 2 and print one line on stderr, never a traceback. The counts
(tried / clear / other) are the passed and xfailed cases of this file.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from conftest import TINY_BACKBONES, write_image_tree

import pixelgen
from pixelgen import build_model, build_sampler
from pixelgen.cli import main as cli_main
from pixelgen.utils.io import CheckpointError

CUDA = torch.cuda.is_available()


class Opaque:
    """An object a checkpoint should not hold (torch.load(weights_only=True) refuses it)."""


# -- parts the cases use -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def parts(tmp_path_factory, tiny_c2i, tiny_dino_encoder):
    from pixelgen import build_objective, save_pretrained

    root = tmp_path_factory.mktemp("bad_inputs")
    model = tiny_c2i
    save_pretrained(model, root / "c2i")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    files = {
        "random.pt": os.urandom(512),
        "config.pt": json.dumps({"arch": "jit"}).encode(),
        "page.ckpt": b"<html><body>Not found</body></html>",
    }
    for name, data in files.items():
        (root / name).write_bytes(data)

    torch.save({"state_dict": {"w": torch.ones(1)}, "callback": Opaque()}, root / "pickled.ckpt")
    good = (root / "c2i" / "model.safetensors").read_bytes()
    (root / "c2i_truncated").mkdir()
    (root / "c2i_truncated" / "model.safetensors").write_bytes(good[: len(good) // 3])
    (root / "c2i_truncated" / "config.json").write_text((root / "c2i" / "config.json").read_text())
    torch.save({"w": torch.ones(1)}, root / "good.pt")
    zipped = (root / "good.pt").read_bytes()
    (root / "truncated.pt").write_bytes(zipped[: len(zipped) // 2])
    write_image_tree(root / "images")
    objective = build_objective(
        "jit_repa", hidden_size=model.hidden_size, align_layer=1, encoders={"dinov2": tiny_dino_encoder}
    )
    return dict(
        root=root,
        model=model,
        x=x,
        t=torch.rand(2, generator=g),
        y=torch.tensor([1, 2]),
        objective=objective,
        euler=build_sampler("euler", num_steps=2),
    )


def _objective_batch(p, **changes):
    raw = (p["x"] + 1) / 2
    return {"image": p["x"], "raw": raw, "cond": p["y"], **changes}


def _case(call, match, errors=(ValueError, TypeError, CheckpointError), *, id, xfail=None):
    marks = [pytest.mark.xfail(reason=xfail, strict=True)] if xfail else []
    return pytest.param(call, match, errors, id=id, marks=marks)


J = TINY_BACKBONES["jit"]

API_CASES = [
    # building backbones
    _case(
        lambda p: build_model("jit", **{**J, "depth": True}),
        r"argument depth must be an integer, got bool",
        id="build:depth=True",
    ),
    _case(
        lambda p: build_model("jit", **{**J, "depth": "3"}), r"depth must be an integer, got str", id="build:depth='3'"
    ),
    _case(
        lambda p: build_model("jit", **{**J, "hidden_size": 32.0}),
        r"hidden_size must be an integer, got float",
        id="build:hidden_size=32.0",
    ),
    _case(
        lambda p: build_model("jit", **{**J, "mlp_ratio": "4"}),
        r"mlp_ratio must be a number, got str",
        id="build:mlp_ratio='4'",
    ),
    _case(
        lambda p: build_model("jit", **{**J, "use_bottleneck": "no"}),
        r"use_bottleneck must be True or False",
        id="build:use_bottleneck='no'",
    ),
    _case(
        lambda p: build_model("jit", **{**J, "num_heads": 0}),
        r"num_heads must be a positive integer",
        id="build:num_heads=0",
    ),
    _case(
        lambda p: build_model("jit", **{**J, "hidden_size": 33}),
        r"hidden_size 33 is not divisible by num_heads 2",
        id="build:hidden%heads",
    ),
    _case(
        lambda p: build_model("jit", **{**J, "depht": 3}),
        r"Unknown argument\(s\) depht .*did you mean depth",
        id="build:typo",
    ),
    _case(
        lambda p: build_model("jit_xl_16"),
        r"Unknown backbone 'jit_xl_16'; did you mean",
        (KeyError,),
        id="build:unknown name",
    ),
    _case(
        lambda p: build_model("jit", dtype=torch.int8, **J),
        r"dtype must be a floating-point torch.dtype",
        id="build:dtype=int8",
    ),
    _case(
        lambda p: build_model("jit", device="gpu0", **J),
        r"device must be a torch device such as",
        id="build:device='gpu0'",
    ),
    *(
        []
        if CUDA
        else [
            _case(
                lambda p: build_model("jit", device="cuda", **J), r"CUDA is not available", id="build:cuda without CUDA"
            )
        ]
    ),
    # forward
    _case(
        lambda p: p["model"](p["x"], p["t"], p["y"], return_layer=True),
        r"return_layer must be an integer",
        id="forward:return_layer=True",
    ),
    _case(
        lambda p: p["model"](p["x"], p["t"], p["y"], return_layer=9),
        r"return_layer must be an integer block index in \[0, 3\]",
        id="forward:return_layer=9",
    ),
    _case(
        lambda p: p["model"](p["x"] * math.nan, p["t"], p["y"]),
        r"^x contains NaN or infinite values\.$",
        id="forward:NaN x",
    ),
    _case(
        lambda p: p["model"](p["x"].masked_fill(p["x"] > 0.5, math.inf), p["t"], p["y"]),
        r"^x contains NaN",
        id="forward:inf x",
    ),
    _case(
        lambda p: p["model"](p["x"].half(), p["t"], p["y"]),
        r"x is float16 but the model's weights are float32",
        id="forward:float16 x",
    ),
    _case(lambda p: p["model"](p["x"].bfloat16(), p["t"], p["y"]), r"x is bfloat16 but", id="forward:bfloat16 x"),
    _case(lambda p: p["model"](p["x"].double(), p["t"], p["y"]), r"x is float64 but", id="forward:float64 x"),
    _case(lambda p: p["model"](p["x"][:0], p["t"][:0], p["y"][:0]), r"x is an empty batch", id="forward:empty batch"),
    _case(lambda p: p["model"](p["x"][:, :1], p["t"], p["y"]), r"x must have 3 channels", id="forward:1 channel"),
    _case(
        lambda p: p["model"](p["x"][..., :15], p["t"], p["y"]),
        r"not a multiple of the patch size",
        id="forward:odd size",
    ),
    _case(lambda p: p["model"](p["x"], p["t"] * 1000, p["y"]), r"t must lie in \[0, 1\]", id="forward:t x1000"),
    _case(
        lambda p: p["model"](p["x"], p["t"] * math.nan, p["y"]), r"t must lie in \[0, 1\] .*got NaN", id="forward:NaN t"
    ),
    _case(lambda p: p["model"](p["x"], p["t"][:1], p["y"]), r"t must have shape \(2,\)", id="forward:t shape"),
    _case(
        lambda p: p["model"](p["x"], p["t"], p["y"].float()),
        r"integer class labels for this class-conditional model",
        id="forward:float labels",
    ),
    _case(
        lambda p: p["model"](p["x"], p["t"], torch.randn(2, 5, 12)),
        r"looks like text embeddings",
        id="forward:text embeddings to a class model",
    ),
    _case(
        lambda p: p["model"](p["x"], p["t"], torch.tensor([0, 99])),
        r"class indices in \[0, 5\]",
        id="forward:label out of range",
    ),
    _case(
        lambda p: p["model"](p["x"].to("meta"), p["t"], p["y"]),
        r"x is on meta but the model is on cpu",
        id="forward:device mismatch",
    ),
    _case(
        lambda p: p["model"](p["x"].numpy(), p["t"], p["y"]),
        r"x must be a torch.Tensor, got ndarray",
        id="forward:numpy x",
    ),
    # samplers
    _case(
        lambda p: build_sampler("euler", num_steps=True), r"num_steps must be an integer", id="sampler:num_steps=True"
    ),
    _case(lambda p: build_sampler("euler", num_steps="5"), r"num_steps must be an integer", id="sampler:num_steps='5'"),
    _case(
        lambda p: build_sampler("euler", num_steps=0), r"num_steps must be an integer >= 1", id="sampler:num_steps=0"
    ),
    _case(
        lambda p: build_sampler("eular"),
        r"Unknown sampler 'eular'; did you mean 'euler'",
        (KeyError,),
        id="sampler:typo",
    ),
    _case(lambda p: build_sampler("heun", guidance=math.nan), r"guidance", id="sampler:guidance=NaN"),
    _case(
        lambda p: p["euler"](lambda x, t, c: x, torch.full((2, 3, 4, 4), math.nan), p["y"]),
        r"^noise contains NaN or infinite values\.$",
        id="sampler:NaN noise",
    ),
    _case(
        lambda p: p["euler"](lambda x, t, c: x, torch.randn(2, 3, 4, 4), p["y"][:1]), r"cond", id="sampler:cond batch"
    ),
    _case(
        lambda p: p["euler"]("model", torch.randn(2, 3, 4, 4), p["y"]),
        r"denoiser must be callable",
        id="sampler:denoiser not callable",
    ),
    _case(
        lambda p: build_sampler("heun", guidance=2.0)(lambda x, t, c: x, torch.randn(2, 3, 4, 4), p["y"]),
        r"needs uncond",
        id="sampler:guided without uncond",
    ),
    # generate
    _case(
        lambda p: pixelgen.generate(p["model"], torch.tensor([0.5, 1.0]), sampler=p["euler"], progress=False),
        r"labels must be a \(2,\) tensor of integer class labels",
        id="generate:float labels",
    ),
    _case(
        lambda p: pixelgen.generate(p["model"], torch.randn(2, 5, 12), sampler=p["euler"], progress=False),
        r"looks like text embeddings",
        id="generate:embeddings to a class model",
    ),
    _case(
        lambda p: pixelgen.generate(p["model"], [0, 9], sampler=p["euler"], progress=False),
        r"labels must be class indices in \[0, 5\]",
        id="generate:label out of range",
    ),
    _case(
        lambda p: pixelgen.generate(p["model"], [0, 1], sampler=p["euler"], seed=-1, progress=False),
        r"seed",
        id="generate:seed=-1",
    ),
    _case(
        lambda p: pixelgen.generate(p["model"], [0, 1], sampler=p["euler"], batch_size=0, progress=False),
        r"batch_size must be at least 1",
        id="generate:batch_size=0",
    ),
    _case(
        lambda p: pixelgen.generate("model", [0, 1], sampler=p["euler"], progress=False),
        r"model must be a torch.nn.Module",
        id="generate:model not a module",
    ),
    *(
        []
        if CUDA
        else [
            _case(
                lambda p: pixelgen.generate(p["model"], [0, 1], sampler=p["euler"], device="cuda", progress=False),
                r"CUDA is not available",
                id="generate:cuda without CUDA",
            )
        ]
    ),
    # objective
    _case(
        lambda p: p["objective"](p["model"], _objective_batch(p, image=(p["x"] + 1) / 2)),
        r"looks like a \[0, 1\] image: pass image \* 2 - 1",
        id="objective:[0,1] image",
    ),
    _case(
        lambda p: p["objective"](p["model"], _objective_batch(p, image=(p["x"] + 1) * 127.5)),
        r"0-255 pixel values",
        id="objective:0-255 image",
    ),
    _case(
        lambda p: p["objective"](p["model"], _objective_batch(p, image=p["x"] * math.nan)),
        r"The training image must hold values in \[-1, 1\], got NaN",
        id="objective:NaN image",
    ),
    _case(
        lambda p: p["objective"](p["model"], _objective_batch(p, raw=p["x"])),
        r"\[-1, 1\] image where a \[0, 1\] one is expected",
        id="objective:raw in [-1,1]",
    ),
    _case(
        lambda p: p["objective"](p["model"], _objective_batch(p, cond=torch.tensor([0, 99]))),
        r"class indices",
        id="objective:label out of range",
    ),
    _case(
        lambda p: p["objective"](p["model"], _objective_batch(p, cond=p["y"].float())),
        r"batch\['cond'\] must be a \(2,\) tensor of integer class labels",
        id="objective:float labels to a class model",
    ),
    _case(
        lambda p: p["objective"](p["model"], _objective_batch(p, cond=torch.randn(2, 5, 12))),
        r"looks like text embeddings",
        id="objective:text embeddings to a class model",
    ),
    _case(
        lambda p: p["objective"](p["model"], {"image": p["x"]}),
        r"batch lacks 'cond' \(it needs",
        (KeyError,),
        id="objective:missing keys",
    ),
    _case(
        lambda p: pixelgen.build_objective(
            "jit_repa", hidden_size=16, weights={"repa": math.nan}, encoders={"dinov2": "random"}
        ),
        r"The weight of repa must be a finite number, got nan",
        id="objective:NaN weight",
    ),
    _case(
        lambda p: pixelgen.build_objective(
            "jit_repa", hidden_size=16, weights={"repa": -0.5}, encoders={"dinov2": "random"}
        ),
        r"The weight of repa must be at least 0",
        id="objective:negative weight",
    ),
    _case(
        lambda p: pixelgen.build_objective("jit_repa", hidden_size=16, weights={"lpips": 1.0}),
        r"weights names term\(s\) lpips that are not in losses",
        id="objective:weight of an absent term",
    ),
    _case(
        lambda p: pixelgen.build_objective("pixelgen", hidden_size=16, pdino_gating="sometimes"),
        r"gating",
        id="objective:pdino_gating",
    ),
    # encoders
    _case(
        lambda p: pixelgen.build_encoder("dinov2_vitb14", weights=3),
        r"weights must be None, 'random' or a file path",
        id="encoder:weights=3",
    ),
    _case(
        lambda p: pixelgen.build_encoder("dinov2_vitb14", weights=p["root"] / "missing.pth"),
        r"missing.pth",
        (FileNotFoundError, ValueError, CheckpointError),
        id="encoder:missing file",
    ),
    _case(
        lambda p: pixelgen.build_encoder("dinov2_vitb14", weights=p["root"] / "config.pt"),
        r"is not a PyTorch checkpoint: it looks like a JSON file",
        id="encoder:JSON as weights",
    ),
    _case(
        lambda p: pixelgen.build_encoder("dinov2_vitb14", weights=p["root"] / "pickled.ckpt"),
        r"holds a pickled .*Opaque.*encoder weights are read as tensors only",
        id="encoder:pickle refused, no trust option",
    ),
    _case(
        lambda p: pixelgen.build_encoder("lpips", "random", dtype="int8"),
        r"dtype must be a floating torch dtype",
        id="encoder:dtype",
    ),
    _case(
        lambda p: pixelgen.build_encoder("lpips", "random", net="resnet"),
        r"Unknown LPIPS trunk 'resnet'; choose one of",
        (KeyError, ValueError),
        id="encoder:unknown net",
    ),
    _case(
        lambda p: (
            p["objective"].encoders["dinov2"](torch.rand(2, 3, 32, 32) * 255)
            if hasattr(p["objective"], "encoders")
            else pixelgen.build_encoder(
                "dinov2_vitb14", "random", model_overrides=dict(embed_dim=24, depth=1, num_heads=2, img_size=98)
            )(torch.rand(2, 3, 32, 32) * 255)
        ),
        r"0-255",
        id="encoder:0-255 input",
    ),
    # checkpoints and conversion
    _case(
        lambda p: pixelgen.convert_checkpoint(p["root"] / "random.pt", p["root"] / "out"),
        r"is not a PyTorch checkpoint",
        id="convert:random bytes",
    ),
    _case(
        lambda p: pixelgen.convert_checkpoint(p["root"] / "config.pt", p["root"] / "out"),
        r"it looks like a JSON file",
        id="convert:JSON file",
    ),
    _case(
        lambda p: pixelgen.convert_checkpoint(p["root"] / "page.ckpt", p["root"] / "out"),
        r"HTML or XML file \(a failed download\?\)",
        id="convert:HTML page",
    ),
    _case(
        lambda p: pixelgen.convert_checkpoint(p["root"] / "truncated.pt", p["root"] / "out"),
        r"is corrupt or truncated",
        id="convert:truncated",
    ),
    _case(
        lambda p: pixelgen.convert_checkpoint(p["root"] / "pickled.ckpt", p["root"] / "out"),
        r"holds a pickled .*Opaque .*--trust-pickle of pixelgen convert",
        id="convert:pickle refused",
    ),
    _case(
        lambda p: pixelgen.convert_checkpoint(p["root"] / "nothing.ckpt", p["root"] / "out"),
        r"does not exist",
        id="convert:missing file",
    ),
    _case(
        lambda p: pixelgen.convert_checkpoint(p["root"] / "good.pt", p["root"] / "out", weights="best"),
        r"weights must be 'ema' or 'raw'",
        id="convert:weights='best'",
    ),
    _case(
        lambda p: pixelgen.load_pretrained(p["root"] / "c2i_truncated"),
        r"not a readable safetensors file",
        id="load_pretrained:truncated",
    ),
    _case(
        lambda p: pixelgen.load_pretrained(p["root"] / "nowhere"),
        r"neither a folder written by save_pretrained",
        id="load_pretrained:missing",
    ),
    *(
        []
        if CUDA
        else [
            _case(
                lambda p: pixelgen.load_pretrained(p["root"] / "c2i", device="cuda"),
                r"CUDA is not available on this machine",
                id="load_pretrained:cuda without CUDA",
            )
        ]
    ),
    _case(
        lambda p: pixelgen.save_pretrained(torch.nn.Linear(2, 2), p["root"] / "lin"),
        r"needs a pixelgen backbone",
        id="save_pretrained:not a backbone",
    ),
    _case(
        lambda p: __import__("pixelgen.train.checkpointing", fromlist=["x"]).load_training_checkpoint(
            p["root"] / "pickled.ckpt"
        ),
        r"holds a pickled .*so it was not written by pixelgen",
        id="resume:pickle refused, no trust option",
    ),
    _case(
        lambda p: __import__("pixelgen.train.checkpointing", fromlist=["x"]).load_training_checkpoint(
            p["root"] / "random.pt"
        ),
        r"is not a PyTorch checkpoint",
        id="resume:random bytes",
    ),
    # data
    _case(
        lambda p: pixelgen.data.build_dataset("imagenet", root=p["root"] / "nope"),
        r"does not exist",
        (FileNotFoundError,),
        id="data:missing folder",
    ),
    _case(
        lambda p: pixelgen.data.build_dataset("imagenet", root=p["root"] / "images", resolution="256"),
        r"resolution must be an integer",
        id="data:resolution='256'",
    ),
    _case(
        lambda p: pixelgen.data.build_dataset("imagenet", root=p["root"] / "images", resolution=True),
        r"resolution must be an integer",
        id="data:resolution=True",
    ),
    _case(
        lambda p: pixelgen.data.build_dataset("imagenet", root=p["root"] / "images", max_bad_images=-1),
        r"max_bad_images must be at least 0",
        id="data:max_bad_images=-1",
    ),
    _case(
        lambda p: pixelgen.data.build_dataset("imagenet", root=p["root"] / "images" / "class0"),
        r"no class sub-folders",
        id="data:class folder as root",
    ),
    _case(
        lambda p: pixelgen.data.build_dataset("imagenet", root=3),
        r"root must be a (string or a PathLike|path)",
        id="data:root=3",
    ),
    _case(
        lambda p: pixelgen.data.build_dataset("imagenet", root=p["root"] / "images")[99],
        r"index must be an integer in \[0, 4\)",
        (IndexError,),
        id="data:index out of range",
    ),
    _case(
        lambda p: pixelgen.data.build_dataset("demo", resolution=4),
        r"resolution must lie between 8 and 512",
        id="data:demo resolution",
    ),
    _case(
        lambda p: pixelgen.data.build_loader(pixelgen.data.build_dataset("demo", resolution=8), batch_size=0),
        r"batch_size must be a positive integer",
        id="data:batch_size=0",
    ),
    _case(
        lambda p: pixelgen.data.build_loader(
            pixelgen.data.build_dataset("demo", resolution=8), batch_size=2, num_workers=True
        ),
        r"num_workers must be a non-negative integer",
        id="data:num_workers=True",
    ),
    _case(
        lambda p: pixelgen.data.build_dataset("imagenett"),
        r"Unknown dataset 'imagenett'; did you mean 'imagenet'",
        (KeyError,),
        id="data:typo",
    ),
]


def _one_sentence(message: str) -> bool:
    return "\n" not in message.strip() and message.strip()[-1:] in ".?)'" and len(message) < 400


@pytest.mark.parametrize("call,match,errors", API_CASES)
def test_api_bad_input_is_one_sentence(parts, call, match, errors):
    with pytest.raises(errors) as info:
        call(parts)
    message = info.value.args[0] if info.value.args else str(info.value)
    assert isinstance(message, str) and _one_sentence(message), f"not one sentence: {message!r}"
    import re

    assert re.search(match, message), f"{message!r} does not match {match!r}"


# -- the command line: exit code 2, one line on stderr, no traceback --------------------------------------------
def _cli(argv, capsys) -> tuple[int, str]:
    try:
        code = cli_main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def _cli_case(argv, match, *, id, xfail=None):
    marks = [pytest.mark.xfail(reason=xfail, strict=True)] if xfail else []
    return pytest.param(argv, match, id=id, marks=marks)


CLI_CASES = [
    _cli_case(["bogus"], r"invalid choice: 'bogus'", id="pixelgen bogus"),
    _cli_case(["list", "backbones"], r"invalid choice: 'backbones'", id="list:bad kind"),
    _cli_case(["list", "--threads", "zero"], r"threads", id="list:--threads zero"),
    _cli_case(["train", "--steps", "1.5", "--demo"], r"--steps.*integer", id="train:--steps 1.5"),
    _cli_case(["train", "--demo", "--set", "optim.lr=fast"], r"optim.lr", id="train:--set optim.lr=fast"),
    _cli_case(["train", "--demo", "--set", "nonsense=1"], r"nonsense", id="train:--set unknown key"),
    _cli_case(["train", "--data", "{root}/nothing"], r"does not exist", id="train:--data missing"),
    _cli_case(["train", "--demo", "--batch-size", "0"], r"batch", id="train:--batch-size 0"),
    _cli_case(["train", "--preset", "pixelgen_xxxl"], r"pixelgen_xxxl", id="train:unknown preset"),
    _cli_case(["train", "--demo", "--set", "optim.betas=[0.9]"], r"optim.betas", id="train:--set optim.betas=[0.9]"),
    _cli_case(["train", "--demo", "--set", "max_steps=1.5"], r"max_steps", id="train:--set max_steps=1.5"),
    _cli_case(
        ["sample", "--checkpoint", "{root}/nowhere", "--out", "{root}/s"], r"nowhere", id="sample:missing checkpoint"
    ),
    _cli_case(
        ["sample", "--checkpoint", "{root}/c2i", "--out", "{root}/s", "--per-class", "0"],
        r"per-class",
        id="sample:--per-class 0",
    ),
    _cli_case(
        ["sample", "--checkpoint", "{root}/c2i", "--out", "{root}/s", "--steps", "-3"], r"steps", id="sample:--steps -3"
    ),
    _cli_case(
        ["sample", "--checkpoint", "{root}/c2i", "--out", "{root}/s", "--sampler", "eular"],
        r"eular",
        id="sample:unknown sampler",
    ),
    _cli_case(
        ["sample", "--checkpoint", "{root}/c2i", "--out", "{root}/s", "--device", "cuda"],
        r"CUDA is not available",
        id="sample:--device cuda without CUDA",
    ),
    _cli_case(["eval", "{root}/missing.npz", "--ref", "{root}/ref.npz"], r"missing.npz", id="eval:missing samples"),
    _cli_case(
        ["generate", "--checkpoint", "{root}/c2i", "--prompt", "a cat"],
        r"class-to-image model",
        id="generate:prompt to a class model",
    ),
    _cli_case(
        ["generate", "--checkpoint", "{root}/c2i", "--class", "99"], r"99|class", id="generate:class out of range"
    ),
    _cli_case(
        ["generate", "--checkpoint", "{root}/nowhere", "--class", "1"], r"nowhere", id="generate:missing checkpoint"
    ),
    _cli_case(["convert", "{root}/random.pt", "{root}/out"], r"is not a PyTorch checkpoint", id="convert:random bytes"),
    _cli_case(["convert", "{root}/pickled.ckpt", "{root}/out"], r"--trust-pickle", id="convert:pickle refused"),
    _cli_case(
        ["convert", "{root}/good.pt", "{root}/out", "--weights", "best"],
        r"invalid choice: 'best'",
        id="convert:--weights best",
    ),
    _cli_case(
        ["convert", "{root}/good.pt", "{root}/out", "--set", "depth"],
        r"KEY=VALUE|depth",
        id="convert:--set without value",
    ),
    _cli_case(["ema", "reconstruct"], r"error", id="ema:missing arguments"),
    _cli_case(["sweep", "--ref", "{root}/ref.npz"], r"error", id="sweep:missing arguments"),
    _cli_case(["app", "--checkpoint", "{root}/nowhere"], r"nowhere", id="app:missing checkpoint"),
    _cli_case(["app", "--checkpoint", "{root}/c2i", "--port", "70000"], r"port", id="app:bad port"),
]


@pytest.mark.parametrize("argv,match", CLI_CASES)
def test_cli_bad_option_is_one_line_exit_2(parts, capsys, argv, match):
    argv = [a.format(root=parts["root"]) for a in argv]
    code, err = _cli(argv, capsys)
    # Log warnings may precede the error (e.g. random frozen weights in the demo); the error is one line.
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("WARNING ")]
    assert "Traceback" not in err, err
    assert code == 2, f"exit code {code}: {err}"
    assert len(lines) == 1 and lines[0].startswith("pixelgen"), err
    import re

    assert re.search(match, lines[0]), lines[0]
