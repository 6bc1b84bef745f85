"""Backbones, the objective, data and EMA against the second reference set made from the original code, and
the behaviours it pinned down: positions at a non-square grid, the adaptive weight without a gated sample, the
dropout block range, the order of the training draws, the EMA of the frozen position table, the bf16 stream."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from conftest import DATA
from safetensors.torch import load_file

import pixelgen
from pixelgen.backbones import build_model
from pixelgen.checkpoint import convert_checkpoint
from pixelgen.train.ema import EMA

TERMS = {"fm_loss": "flow_matching", "cos_loss": "repa", "lpips_loss": "lpips", "dino_percept_loss": "pdino"}
TERMS.update(percept_weight="percept_weight", loss="loss")


@pytest.fixture(scope="module")
def ref():
    tensors = load_file(str(DATA / "upstream_reference2.safetensors"))
    meta = json.loads((DATA / "upstream_reference2.json").read_text())
    return tensors, meta


def _cases(kind: str) -> list[str]:
    meta = json.loads((DATA / "upstream_reference2.json").read_text())
    kinds = (kind,) if isinstance(kind, str) else kind
    return [k for k, v in meta.items() if not k.startswith("_") and v["kind"] in kinds]


def _sub(tensors, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _maxabs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


# -- backbones -------------------------------------------------------------------------------------------
def _backbone(ref, name, **options):
    tensors, meta = ref
    m = meta[name]
    model = build_model("jit" if m["kind"] == "c2i" else "jit_t2i", **m["config"], **options).eval()
    model.load_state_dict(_sub(tensors, f"{name}/state/"), strict=True)
    x, t, y = (tensors[f"{name}/in/{k}"] for k in ("x", "t", "y"))
    with torch.no_grad():
        return model(x, t, y, return_layer=m["return_layer"])


@pytest.mark.parametrize("name", _cases(("c2i", "t2i")))
def test_backbone_cases(ref, name):
    tensors, meta = ref
    x_hat, feature = _backbone(ref, name)
    tol = meta[name]["tol"]["atol"]
    assert _maxabs(x_hat, tensors[f"{name}/out/x_hat"]) <= tol
    assert _maxabs(feature, tensors[f"{name}/out/feature"]) <= tol


def test_text_to_image_non_square_input_with_the_trained_token_count_uses_the_stored_table(ref):
    tensors, meta = ref
    name = "b_t2i_nonsquare_same_tokens"
    assert tuple(tensors[f"{name}/in/x"].shape[-2:]) == (16, 64)  # a 2x8 grid on a model trained on 4x4
    x_hat, _ = _backbone(ref, name, grid_positions="per_grid")  # pixelgen's table regenerated for 2x8
    assert _maxabs(x_hat, tensors[f"{name}/out/x_hat"]) > 1e-2
    model = build_model("jit_t2i", **meta[name]["config"])
    assert model.position_table(2, 8) is model.pos_embed and model.position_table(8, 2) is model.pos_embed
    fresh = model.position_table(4, 8)  # a genuinely new token count: regenerated in both modes
    assert fresh.shape == (1, 32, 16) and fresh is not model.pos_embed
    c2i = build_model("jit", input_size=32, patch_size=8, hidden_size=16, depth=1, num_heads=2, num_classes=3)
    assert c2i.grid_positions == "per_grid" and c2i.position_table(2, 8) is not c2i.pos_embed
    with pytest.raises(ValueError, match="grid_positions must be one of original, per_grid"):
        model.grid_positions = "stored"


# -- the objective ---------------------------------------------------------------------------------------
@torch.no_grad()
def _lpips_trunk(net, seed: int) -> None:
    """The reference set's trunk recipe (meta['_objective']['lpips_recipe'])."""
    g = torch.Generator().manual_seed(seed)
    for name, p in net.named_parameters():
        if p.ndim <= 1:
            scale, offset = (0.1, 1.0) if name.endswith("weight") else (0.05, 0.0)
            p.copy_(offset + scale * torch.randn(p.shape, generator=g))
        else:
            p.copy_(p[0].numel() ** -0.5 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def encoders(ref):
    tensors, meta = ref
    shared = meta["_objective"]
    dino = pixelgen.build_encoder("dinov2_vitb14", weights="random", model_overrides=dict(shared["dino_tiny"]))
    dino.backbone.load_state_dict(_sub(tensors, "objective/dino/"), strict=True)
    lpips = pixelgen.build_encoder("lpips", weights="random")
    _lpips_trunk(lpips.metric.net, int(shared["lpips_recipe"].split("manual_seed(")[1].split(")")[0]))
    return {"dinov2": dino, "lpips": lpips}


@contextlib.contextmanager
def _draws_in_the_original_order(monkeypatch, u_drop, n_t, noise):
    """torch.rand / randn return the stored draws, and only in the original's order: dropout, t, noise."""
    order = iter([("rand", u_drop), ("randn", n_t), ("randn", noise)])

    def serve(kind, size):
        expected_kind, value = next(order)
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else tuple(size)
        assert (kind, shape) == (expected_kind, tuple(value.shape)), f"drew torch.{kind}{shape} out of order"
        return value.clone()

    with monkeypatch.context() as patch:
        patch.setattr(torch, "rand", lambda *size, **kw: serve("rand", size))
        patch.setattr(torch, "randn", lambda *size, **kw: serve("randn", size))
        patch.setattr(torch, "randn_like", lambda x, **kw: serve("randn", (x.shape,)))
        yield
    assert next(order, None) is None, "a stored draw was not used"


def _objective_model(ref, m):
    tensors, meta = ref
    shared = meta["_objective"]
    t2i = m["model"] == "t2i"
    config = dict(shared["t2i_config"] if t2i else shared["c2i_config"])
    state = "objective/t2i_state/" if t2i else "objective/c2i_state/"
    if m["model"] == "c2i_drop":
        config["proj_drop"] = 0.1
    if m["model"] == "c2i_drop4":
        config.update(depth=4, proj_drop=0.1)
        state = "objective/c2i4_state/"
    model = build_model("jit_t2i" if t2i else "jit", **config)
    model.load_state_dict(_sub(tensors, state), strict=True)
    return model.train()


def _run_objective_case(ref, encoders, monkeypatch, name, **extra):
    """Per step: (our outputs, the model) after one backward, with the stored draws injected in order."""
    tensors, meta = ref
    m = meta[name]
    model = _objective_model(ref, m)
    obj = pixelgen.build_objective(
        m["preset"], model=model, align_layer=m["align_layer"], encoders=encoders, **m["pixelgen_overrides"], **extra
    )
    obj.load_upstream_state({"proj." + k: v for k, v in _sub(tensors, "objective/proj/").items()})
    raw = tensors["objective/in/image_uint8"].float() / 255.0
    t2i = m["model"] == "t2i"
    batch = {"image": raw * 2 - 1, "raw": raw, "cond": tensors["objective/in/text" if t2i else "objective/in/y"]}
    if t2i:
        batch["uncond"] = tensors["objective/in/text_uncond"]
    for i, step in enumerate(m["steps"]):
        model.zero_grad(set_to_none=True)
        obj.zero_grad(set_to_none=True)
        if m["dropout_seed"] is not None:
            torch.manual_seed(m["dropout_seed"])
        draws = (tensors["objective/in/u_drop"], tensors[f"{name}/step{i}/n_t"], tensors["objective/in/noise"])
        with _draws_in_the_original_order(monkeypatch, *draws):
            out = obj(model, batch, step=step)
        out["loss"].backward()
        yield i, out, model, obj


@pytest.mark.parametrize("name", _cases("objective"))
def test_objective_cases(ref, encoders, monkeypatch, name):
    tensors, meta = ref
    m = meta[name]
    tol = m["tol"]
    for i, out, model, obj in _run_objective_case(ref, encoders, monkeypatch, name):
        for theirs, ours in TERMS.items():
            if theirs in m["terms"][str(i)]:
                expected = m["terms"][str(i)][theirs]
                got = float(out[ours].detach())
                assert abs(got - expected) <= tol["term_atol"] + tol["term_rtol"] * abs(expected), (i, ours, got)
        params = dict(model.named_parameters())
        for pname, expected in zip(m["grad_param_names"], tensors[f"{name}/step{i}/grad_norms"].tolist()):
            grad = params[pname].grad
            got = float(grad.norm()) if grad is not None else 0.0
            assert abs(got - expected) <= tol["grad_atol"] + tol["grad_rtol"] * expected, (i, pname, got)
        for pname, expected in _sub(tensors, f"{name}/step{i}/grad/").items():
            err = _maxabs(params[pname].grad, expected)
            assert err <= tol["grad_atol"] + tol["grad_rtol"] * float(expected.abs().max()), (i, pname)
        if "repa" in obj.terms:
            got = [float(p.grad.norm()) for p in obj.terms["repa"].proj.parameters()]
            for a, b in zip(got, tensors[f"{name}/step{i}/proj_grad_norms"].tolist()):
                assert abs(a - b) <= tol["grad_atol"] + tol["grad_rtol"] * b


def test_the_adaptive_weight_without_a_gated_sample(ref, encoders, monkeypatch):
    """The original: the ratio against a zero gradient, clamped to 100 (w = 0.8 + 20 = 20.8); the option keeps w."""
    name = "o_pixelgen_balance_none_gated"
    weights = [float(out["percept_weight"]) for _, out, _, _ in _run_objective_case(ref, encoders, monkeypatch, name)]
    assert weights == [pytest.approx(20.8, rel=1e-6)] * 2
    kept = _run_objective_case(
        ref, encoders, monkeypatch, name, balancer={"start_step": 400_000, "no_gradient": "keep"}
    )
    assert [float(out["percept_weight"]) for _, out, _, _ in kept] == [1.0, 1.0]


@pytest.mark.parametrize("depth,blocks", [(3, []), (4, [1, 2]), (6, [1, 2]), (7, [1, 2]), (28, list(range(7, 21)))])
def test_dropout_acts_in_blocks_depth_quarter_to_three_times_that(depth, blocks):
    model = build_model("jit", device="meta", depth=depth, hidden_size=32, num_heads=2, proj_drop=0.1, attn_drop=0.1)
    assert [i for i, b in enumerate(model.blocks) if b.attn.proj_drop.p > 0] == blocks
    assert [i for i, b in enumerate(model.blocks) if b.attn.attn_drop > 0 and b.mlp.drop.p > 0] == blocks


# -- the order of the training draws ---------------------------------------------------------------------
class _Recorder(torch.nn.Module):
    """x̂ = 0.5·x_t; records what the objective fed it (labels after dropout, t, x_t)."""

    num_classes, hidden_size, patch_size = 10, 8, 8

    def __init__(self):
        super().__init__()
        self.final_layer = torch.nn.Module()
        self.final_layer.linear = torch.nn.Linear(1, 1)
        self.seen = None

    def balance_parameter(self):
        return self.final_layer.linear.weight

    def forward(self, x, t, y, *, return_layer=None):
        self.seen = (x.detach().clone(), t.detach().clone(), y.clone())
        return x * 0.5 + 0 * self.final_layer.linear.weight.sum()


@pytest.mark.parametrize("use_generator", [False, True])
def test_training_draws_follow_the_original_order(use_generator):
    obj = pixelgen.build_objective("jit_repa", losses=["flow_matching"], hidden_size=8, cond_drop_prob=0.5)
    model = _Recorder()
    image = torch.rand(6, 3, 16, 16) * 2 - 1
    labels = torch.arange(6)
    torch.manual_seed(5)
    generator = torch.Generator().manual_seed(5) if use_generator else None
    obj(model, {"image": image, "cond": labels}, generator=generator)
    source = torch.Generator().manual_seed(5) if use_generator else None
    if not use_generator:
        torch.manual_seed(5)
    drop = torch.rand(6, generator=source) < 0.5
    t = torch.sigmoid(torch.randn(6, generator=source) * 0.8 - 0.8)
    noise = torch.randn(6, 3, 16, 16, generator=source)
    x_t, seen_t, seen_y = model.seen
    assert torch.equal(seen_t, t) and torch.equal(seen_y, torch.where(drop, 10, labels))
    torch.testing.assert_close(x_t, t.view(-1, 1, 1, 1) * image + (1 - t.view(-1, 1, 1, 1)) * noise, rtol=0, atol=0)
    assert drop.any() and not drop.all()


# -- EMA ---------------------------------------------------------------------------------------------------
def _ema_case(ref, steps=None, **options):
    tensors, meta = ref
    m = meta["m_ema"]
    model = build_model("jit", **m["config"])
    model.load_state_dict(_sub(tensors, "m_ema/init/"), strict=True)
    ema = EMA(model, decay=0.9999, **options)
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(2)
    for _ in range(m["steps"] if steps is None else steps):
        with torch.no_grad():
            for pname in m["param_order"]:
                if params[pname].requires_grad:
                    params[pname].add_(1e-2 * torch.randn(params[pname].shape, generator=g))
        ema.update()
    return model, ema


@pytest.fixture(scope="module")
def ema_runs(ref):
    """(live model, EMA as the original, EMA with average_frozen=False) after the case's 3000 updates."""
    model, ema = _ema_case(ref)
    _, kept = _ema_case(ref, steps=50, average_frozen=False)
    return model, ema, kept


def test_ema_averages_the_frozen_position_table_as_the_original(ref, ema_runs):
    tensors, meta = ref
    model, ema, kept = ema_runs
    expected = _sub(tensors, "m_ema/out/")
    got = ema.model.state_dict()
    assert max(_maxabs(got[k], v) for k, v in expected.items()) <= meta["m_ema"]["tol"]["atol"]
    assert not torch.equal(got["pos_embed"], model.pos_embed)  # the drift the released EMA weights carry
    assert torch.equal(kept.model.pos_embed, model.pos_embed)
    assert _maxabs(kept.model.pos_embed, expected["pos_embed"]) > 1e-6


def test_released_ema_weights_load_with_their_stored_table(ema_runs, tmp_path):
    _, ema, _ = ema_runs
    drifted = ema.model.pos_embed.detach().clone()
    folder = pixelgen.save_pretrained(ema.model, tmp_path / "export")
    loaded = pixelgen.load_pretrained(folder)
    assert torch.equal(loaded.pos_embed, drifted)
    state = {f"ema_denoiser.{k}": v for k, v in ema.model.state_dict().items()}
    state.update({f"denoiser.{k}": v for k, v in ema.model.state_dict().items()})
    torch.save({"state_dict": state}, tmp_path / "last.ckpt")
    converted = pixelgen.load_pretrained(
        convert_checkpoint(tmp_path / "last.ckpt", tmp_path / "conv", in_context_start=1)
    )
    assert torch.equal(converted.pos_embed, drifted)
    x, t, y = torch.randn(2, 3, 32, 32), torch.rand(2), torch.tensor([1, 5])
    with torch.no_grad():
        assert torch.equal(converted.eval()(x, t, y), ema.model(x, t, y))
        fresh = build_model("jit", **ema.model.config).eval()
        fresh.load_state_dict({k: v for k, v in ema.model.state_dict().items() if k != "pos_embed"}, strict=False)
        assert not torch.equal(fresh(x, t, y), ema.model(x, t, y))  # the table is used, not regenerated


# -- data ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", _cases("data"))
def test_data_cases(ref, name):
    tensors, meta = ref
    m = meta[name]
    if name.startswith("d_adm"):
        skdata = pytest.importorskip("skimage.data")
        from PIL import Image

        from pixelgen.data.transforms import adm_center_crop, make_sample

        image = Image.fromarray(getattr(skdata, m["source"].split(".")[-1].rstrip("()"))()).convert("RGB")
        if m.get("crop_box"):
            image = image.crop(tuple(m["crop_box"]))
        sample = make_sample(adm_center_crop(image, 256))
        assert torch.equal((sample["raw"] * 255).round().to(torch.uint8), tensors[f"{name}/out/uint8"])
        assert abs(float(sample["image"].double().sum()) - float(tensors[f"{name}/out/image_sum"][0])) < 1e-6
    elif name == "d_uint8":
        from pixelgen.samplers import to_uint8

        assert torch.equal(to_uint8(tensors[f"{name}/in/x"].clone()), tensors[f"{name}/out/uint8"])
    else:
        pytest.skip(f"no check written for data case {name}")


# -- mixed precision of the residual stream ---------------------------------------------------------------
def _randomised(arch, seed=0, **config):
    torch.manual_seed(seed)
    model = build_model(arch, **config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model


def _original_c2i(model, x, t, y):
    """The original's forward with its dtype rules: the position table is added in place (a bf16 stream stays
    bf16), the in-context tokens are built in float32 and concatenated in front (promoting the stream)."""
    from pixelgen.nn import RotaryTable, axial_rope_2d

    gh, gw = x.shape[-2] // model.patch_size, x.shape[-1] // model.patch_size
    tokens = model.x_embedder(x)
    tokens += model.pos_embed
    y_emb = model.y_embedder(y)
    c = model.t_embedder(t) + y_emb
    prefixed = axial_rope_2d(model.head_dim, gh, gw, prefix_len=model.in_context_len)
    image_only = RotaryTable(prefixed.cos[model.in_context_len :], prefixed.sin[model.in_context_len :])
    prefix = 0
    for i, block in enumerate(model.blocks):
        if i == model.in_context_start:
            context = y_emb.unsqueeze(1).repeat(1, model.in_context_len, 1)
            context += model.in_context_posemb
            tokens = torch.cat([context, tokens], dim=1)
            prefix = model.in_context_len
        tokens = block(tokens, c, prefixed if prefix else image_only)
    return model.unpatchify(model.final_layer(tokens[:, prefix:], c), gh, gw)


def _original_t2i(model, x, t, y):
    """The original text-to-image forward's dtype rules: both position tables added in place."""
    import torch.nn.functional as F

    from pixelgen.nn import linspace_rope_2d

    p = model.patch_size
    gh, gw = x.shape[-2] // p, x.shape[-1] // p
    tokens = model.x_embedder(F.unfold(x, kernel_size=p, stride=p).transpose(1, 2))
    tokens += model.pos_embed
    cond = F.silu(model.t_embedder(t)).unsqueeze(1)
    text = model.y_embedder(y)
    text += model.y_pos_embedding
    for block in model.text_refine_blocks:
        text = block(text, cond, None)
    rope = linspace_rope_2d(model.head_dim, gh, gw)
    for block in model.blocks:
        tokens = block(tokens, text, cond, rope, None)
    out = model.final_layer(tokens).transpose(1, 2)
    return F.fold(out, output_size=x.shape[-2:], kernel_size=p, stride=p)


MIXED = {
    "jit": (
        dict(input_size=32, patch_size=8, hidden_size=32, depth=3, num_heads=2, num_classes=5, bottleneck_dim=8)
        | dict(in_context_len=2, in_context_start=1),
        _original_c2i,
    ),
    "jit_t2i": (
        dict(input_size=32, patch_size=8, hidden_size=32, num_blocks=2, num_text_blocks=1, num_groups=2)
        | dict(txt_embed_dim=12, txt_max_length=5, bottleneck_dim=8),
        _original_t2i,
    ),
}


def _stream_dtypes(model, x, t, y):
    """Dtypes of the token stream entering each block (text refiner first, for text-to-image)."""
    seen = []
    blocks = [*getattr(model, "text_refine_blocks", []), *model.blocks]
    hooks = [b.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype)) for b in blocks]
    try:
        out = model(x, t, y)
    finally:
        for h in hooks:
            h.remove()
    return out, seen


@pytest.mark.parametrize("arch", list(MIXED))
def test_bf16_autocast_keeps_the_stream_in_the_original_dtypes(arch):
    config, reference = MIXED[arch]
    model = _randomised(arch, **config)
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 3, 32, 32, generator=g), torch.rand(2, generator=g)
    y = torch.tensor([1, 5]) if arch == "jit" else torch.randn(2, 5, 12, generator=g)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = reference(model, x, t, y)
        ours, dtypes = _stream_dtypes(model, x, t, y)
        model.residual_stream = "float32"
        wide, wide_dtypes = _stream_dtypes(model, x, t, y)
    bf16, f32 = torch.bfloat16, torch.float32
    # class-to-image: bf16 until the float32 in-context tokens join at block 1; text-to-image: bf16 throughout
    assert dtypes == ([bf16, f32, f32] if arch == "jit" else [bf16, bf16, bf16])
    assert wide_dtypes == [f32] * len(dtypes)
    assert ours.dtype == expected.dtype and torch.equal(ours, expected)
    assert not torch.equal(wide, expected)
    with torch.no_grad():
        model.residual_stream = "original"
        exact = model.float()(x, t, y)  # without autocast both settings are the float32 function
        model.residual_stream = "float32"
        assert torch.equal(model(x, t, y), exact)
    with pytest.raises(ValueError, match="residual_stream must be one of original, float32"):
        build_model(arch, **config, residual_stream="fp32")
