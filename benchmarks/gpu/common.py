"""Shared state and helpers of the GPU suite: sizes, the run's report and budget, timing, building blocks."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pixelgen import build_model
from pixelgen.encoders import build_encoder
from pixelgen.losses import build_objective
from pixelgen.utils.flops import training_step_flops
from pixelgen.utils.io import atomic_write

SECTIONS = (
    "env",
    "correctness",
    "attention",
    "sample",
    "train",
)  # cheapest compile first: a budget cut hits training's last variant
H100_BF16_PEAK_TFLOPS = 798.0  # an 8192³ bf16 product measured on an H100 80GB HBM3

# The original code on one H100 80GB HBM3: torch 2.11, bf16 autocast, torch.compile as it ships.
ORIGINAL = {
    "train_full": {"ms_per_step": 143.0, "images_per_s": 224.0, "peak_gib": 33.8},
    "train_fm_repa": {"ms_per_step": 119.0, "images_per_s": 32 / 0.119},
    "sample_unguided": {"images_per_s": 7.3},
    "sample_guided": {"images_per_s": 7.3},
}
# images/s: 1.5× the original's training step; sampling 2.2× unguided, 1.3× guided.
TARGETS = {"train_full": 335.0, "sample_unguided": 16.0, "sample_guided": 9.5}
TOLERANCE = {"loss_terms": 2e-2, "sampler_images": 3e-2, "attention": 1e-2, "compiled_images": 3e-2}
"""Relative errors accepted as 'within bf16 tolerance' (bf16 keeps 8 significant bits: 3.9e-3 per rounding)."""

PERTURB_STD = 0.02
HEUN = dict(timeshift=2.0, exact_henu=True)  # + num_steps (50; tiny: 3)
GUIDED = dict(guidance=2.25, guidance_interval_min=0.1, guidance_interval_max=0.9)


@dataclass(frozen=True)
class Sizes:
    """What the suite runs: the paper's XL setting, or a tiny one with the same code paths."""

    model: str
    model_overrides: dict[str, Any]
    dinov2_overrides: dict[str, Any] | None
    train_batch: int
    sample_batch: int
    check_batch: int
    attention_shape: tuple[int, int, int, int]  # (batch, heads, tokens, head_dim)
    lpips_net: str = "vgg"
    dinov2: str = "dinov2_vitb14"
    align_layer: int = 8  # REPA's return_layer
    sample_steps: int = 50
    matmul_side: int = 8192


FULL = Sizes(
    "pixelgen_xl_16", {}, None, train_batch=32, sample_batch=64, check_batch=4, attention_shape=(32, 16, 288, 72)
)
TINY = Sizes(
    "jit",
    dict(
        input_size=32,
        patch_size=16,
        hidden_size=64,
        depth=2,
        num_heads=2,
        num_classes=10,
        bottleneck_dim=8,
        in_context_len=2,
        in_context_start=1,
        proj_drop=0.1,
    ),
    dict(embed_dim=24, depth=2, num_heads=2, init_values=1.0, img_size=98),
    train_batch=4,
    sample_batch=2,
    check_batch=2,
    attention_shape=(2, 2, 8, 32),
    lpips_net="squeeze",
    align_layer=1,
    sample_steps=3,
    matmul_side=256,
)
"""Tiny: a 2-block JiT, a 2-block DINOv2, LPIPS on the small SqueezeNet trunk (fast to build on a CPU; the FLOP
count covers the VGG trunk only, so the tiny full-objective rows carry no FLOPs)."""


# -- the run's state: options, device, report, budget ---------------------------------------------------------
@dataclass
class Suite:
    args: argparse.Namespace
    device: torch.device
    sizes: Sizes
    out: Path | None
    peak_tflops: float | None
    start: float = field(default_factory=time.perf_counter)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def tiny(self) -> bool:
        return self.sizes is TINY

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def within_budget(self, what: str) -> bool:
        if self.elapsed() < self.args.budget_s:
            return True
        note = f"{what}: skipped, {self.elapsed():.0f} s elapsed of the {self.args.budget_s:.0f} s budget"
        self.report["skipped"].append(note)
        log(note)
        return False

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def autocast(self, enabled: bool = True):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def mfu(self, flops: float | None, seconds: float) -> tuple[float | None, float | None]:
        """(achieved TFLOP/s, model FLOP utilisation) for ``flops`` done in ``seconds``."""
        if flops is None or seconds <= 0:
            return None, None
        tflops = flops / seconds / 1e12
        return tflops, (tflops / self.peak_tflops if self.peak_tflops else None)

    def add_result(self, section: str, name: str, **fields: Any) -> dict[str, Any]:
        row = {"section": section, "name": name, **fields}
        self.report["results"].append(row)
        shown = {k: v for k, v in fields.items() if k in ("ms", "images_per_s", "peak_gib", "mfu", "error")}
        log(f"  {name}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items()))
        return row

    def save(self) -> None:
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self.report["elapsed_s"]["total"] = round(self.elapsed(), 2)
        from .report import markdown

        for name, text in (
            ("suite.json", json.dumps(self.report, indent=1, default=str)),
            ("suite.md", markdown(self.report)),
        ):
            with atomic_write(self.out / name) as tmp:
                tmp.write_text(text)


def log(message: str) -> None:
    print(message, flush=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _free(*, compiled_code: bool = False) -> None:
    """Release memory between measurements; ``compiled_code``: also drop torch.compile's caches, which keep the
    compiled models (and their weights) alive."""
    if compiled_code:
        torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@contextlib.contextmanager
def _float32_reference():
    """Full float32 matrix products (no TF32) for reference computations."""
    saved = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]


def bench(suite: Suite, fn: Callable[[], Any], *, warmup: int, iters: int) -> float:
    """Median milliseconds of ``fn`` (CUDA events on GPU, the host clock elsewhere)."""
    for _ in range(warmup):
        fn()
    suite.sync()
    times = []
    for _ in range(iters):
        if suite.cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def profile(suite: Suite, fn: Callable[[], Any], label: str, *, rows: int = 30) -> None:
    """Kernel-time table of ``calls`` runs of ``fn`` (after the timings), appended to ``profiles.txt`` under --out."""
    if suite.out is None or not suite.args.profile:
        return
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    calls = 1 if suite.tiny else 2
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if suite.cuda else [])
    try:
        with torch_profile(activities=activities) as prof:
            for _ in range(calls):
                fn()
            suite.sync()
        key = "self_device_time_total" if suite.cuda else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=90)
    except Exception as exc:
        table = f"profiling failed: {_first_line(exc)}"
    suite.out.mkdir(parents=True, exist_ok=True)
    with open(suite.out / "profiles.txt", "a") as f:
        f.write(f"== {label}: {calls} call(s), sorted by own {'GPU' if suite.cuda else 'CPU'} time ==\n{table}\n\n")


# -- building blocks -----------------------------------------------------------------------------------------
def build_backbone(suite: Suite, seed: int = 0) -> nn.Module:
    """The backbone on the device, with its zero-initialised layers re-drawn so that x̂ depends on the input."""
    torch.manual_seed(seed)
    with torch.device(suite.device):
        model = build_model(
            suite.sizes.model, **suite.sizes.model_overrides, attention_backend=suite.args.attention_backend
        )
    with torch.no_grad():
        for block in model.blocks:
            nn.init.normal_(block.adaLN_modulation[-1].weight, std=PERTURB_STD)
        nn.init.normal_(model.final_layer.adaLN_modulation[-1].weight, std=PERTURB_STD)
        nn.init.normal_(model.final_layer.linear.weight, std=PERTURB_STD)
    return model


def build_frozen(suite: Suite, *, fast: bool = False, like: dict[str, nn.Module] | None = None) -> dict[str, nn.Module]:
    """Random-weight DINOv2 and LPIPS; ``fast``: bf16 weights and channels-last LPIPS (same weights as ``like``)."""
    sizes = suite.sizes
    dtype = torch.bfloat16 if fast else None
    torch.manual_seed(1)
    dino_options = {"model_overrides": sizes.dinov2_overrides} if sizes.dinov2_overrides else {}
    encoders = {
        "dinov2": build_encoder(sizes.dinov2, "random", dtype=dtype, device=suite.device, **dino_options),
        "lpips": build_encoder(
            "lpips", "random", net=sizes.lpips_net, dtype=dtype, device=suite.device, channels_last=fast
        ),
    }
    if like is not None:
        for role, encoder in encoders.items():
            encoder.load_state_dict(like[role].state_dict())
    return encoders


def build_train_objective(
    suite: Suite, model: nn.Module, encoders: dict[str, nn.Module], perceptual: bool
) -> nn.Module:
    preset = "pixelgen" if perceptual else "jit_repa"
    return build_objective(
        preset, hidden_size=model.hidden_size, align_layer=suite.sizes.align_layer, encoders=encoders
    ).to(suite.device)


def random_batch(suite: Suite, model: nn.Module, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator(device=suite.device).manual_seed(seed)
    side = model.input_size
    raw = torch.rand(batch, 3, side, side, generator=g, device=suite.device)
    cond = torch.randint(0, model.num_classes, (batch,), generator=g, device=suite.device)
    return {"image": raw * 2 - 1, "raw": raw, "cond": cond}


def step_flops(suite: Suite, model: nn.Module, batch: int, perceptual: bool) -> float | None:
    """Expected model FLOPs of one training step (LPIPS on the expected gated share, P-DINO on the whole batch);
    None when LPIPS has a trunk other than VGG (no analytic count)."""
    sizes = suite.sizes
    if perceptual and sizes.lpips_net != "vgg":
        return None
    dims = None
    if sizes.dinov2_overrides:
        o = sizes.dinov2_overrides
        dims = (o["embed_dim"], o["depth"], o["num_heads"])
    parts = training_step_flops(model.config, batch=batch, perceptual=perceptual, dinov2=sizes.dinov2, dinov2_dims=dims)
    return parts["total"].total


def _sdpa_backends() -> dict[str, Any]:
    from torch.nn.attention import SDPBackend

    return {
        "math": SDPBackend.MATH,
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
    }


def _attention_inputs(suite: Suite, shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator(device=suite.device).manual_seed(seed)
    return [torch.randn(shape, generator=g, device=suite.device).to(dtype).requires_grad_() for _ in range(3)]


def _xformers_call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    import xformers.ops as xops

    return xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def _sampling_inputs(suite: Suite, model: nn.Module, batch: int, seed: int = 5):
    g = torch.Generator().manual_seed(seed)  # CPU draws, as generate() does
    side = model.input_size
    noise = torch.randn(batch, 3, side, side, generator=g).to(suite.device)
    labels = torch.randint(0, model.num_classes, (batch,), generator=g).to(suite.device)
    return noise, labels, torch.full_like(labels, model.num_classes)


def compile_modes(suite: Suite) -> list[bool]:
    return {"off": [False], "on": [True], "both": [False, True]}[suite.args.compile]


def _attach_original(suite: Suite, kind: str, fields: dict[str, Any]) -> None:
    original = None if suite.tiny else ORIGINAL.get(kind)
    fields["original"] = original
    fields["speedup"] = fields["images_per_s"] / original["images_per_s"] if original else None
    target = None if suite.tiny else TARGETS.get(kind)
    fields["target_images_per_s"] = target
    fields["meets_target"] = (fields["images_per_s"] >= target) if target else None
