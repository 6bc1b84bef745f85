"""The ``correctness`` section: loss terms, sampler images and attention kernels in bf16 against references."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pixelgen.samplers import build_sampler, to_uint8

from .common import (
    GUIDED,
    HEUN,
    TOLERANCE,
    Suite,
    _attention_inputs,
    _first_line,
    _float32_reference,
    _free,
    _rel,
    _sampling_inputs,
    _sdpa_backends,
    _xformers_call,
    build_backbone,
    build_frozen,
    build_train_objective,
    log,
    random_batch,
)


def section_correctness(suite: Suite) -> None:
    result: dict[str, Any] = {"tolerance": TOLERANCE}
    suite.report["correctness"] = result
    model = build_backbone(suite).eval()  # eval: dropout off, so both precisions compute the same function
    frozen = build_frozen(suite)
    result["loss_terms"] = check_loss_terms(suite, model, frozen)
    del frozen
    _free()
    result["sampler"] = check_sampler(suite, model)
    del model
    _free()
    result["attention"] = check_attention(suite)


def check_loss_terms(suite: Suite, model: nn.Module, frozen: dict[str, nn.Module]) -> dict[str, Any]:
    """Every loss term under bf16 autocast (frozen networks in float32, then in bf16 + channels-last) vs float32."""
    b = suite.sizes.check_batch
    batch = random_batch(suite, model, b, seed=3)
    t = torch.linspace(0.15, 0.9, b, device=suite.device)  # samples on both sides of the 0.3 gate
    noise = torch.randn(
        batch["image"].shape, generator=torch.Generator(device=suite.device).manual_seed(4), device=suite.device
    )
    objective = build_train_objective(suite, model, frozen, perceptual=True)
    fast_frozen = build_frozen(suite, fast=True, like=frozen)
    fast_objective = build_train_objective(suite, model, fast_frozen, perceptual=True)
    fast_objective.load_state_dict(objective.state_dict())  # the same REPA projector

    def terms(obj: nn.Module, bf16: bool) -> dict[str, float]:
        with torch.no_grad(), suite.autocast(bf16):
            out = obj.evaluate(model, batch["image"], batch["raw"], batch["cond"], t, noise)
        return {k: float(v) for k, v in out.items() if k != "percept_weight"}

    with _float32_reference():
        reference = terms(objective, bf16=False)
    report: dict[str, Any] = {"float32": reference}
    for label, obj in (("bf16", objective), ("bf16_frozen_bf16_nhwc", fast_objective)):
        values = terms(obj, bf16=True)
        rel = {k: abs(values[k] - reference[k]) / max(abs(reference[k]), 1e-6) for k in reference}
        report[label] = {"values": values, "rel_err": rel, "ok": all(r < TOLERANCE["loss_terms"] for r in rel.values())}
        log(
            f"  loss terms, {label} vs float32: max rel err {max(rel.values()):.2e} ({'ok' if report[label]['ok'] else 'OUT OF TOLERANCE'})"
        )
    return report


def check_sampler(suite: Suite, model: nn.Module) -> dict[str, Any]:
    """Heun-50 images under bf16 autocast vs float32, without and with guidance."""
    noise, labels, null = _sampling_inputs(suite, model, suite.sizes.check_batch)
    report = {}
    for setting, extra in (("unguided", {}), ("guided", GUIDED)):
        sampler = build_sampler("heun", num_steps=suite.sizes.sample_steps, **HEUN, **extra)
        with torch.inference_mode():
            with _float32_reference():
                reference = sampler(model, noise, labels, null)
            with suite.autocast():
                low = sampler(model, noise, labels, null)
        rel = _rel(low, reference)
        levels = (to_uint8(low).int() - to_uint8(reference).int()).abs()
        report[setting] = {
            "rel_err": rel,
            "max_uint8_diff": int(levels.max()),
            "share_uint8_diff_gt_2": float((levels > 2).float().mean()),
            "ok": rel < TOLERANCE["sampler_images"],
        }
        log(
            f"  sampler {setting}, bf16 vs float32: rel err {rel:.2e}, max |Δ| {int(levels.max())}/255 ({'ok' if report[setting]['ok'] else 'OUT OF TOLERANCE'})"
        )
    return report


def check_attention(suite: Suite) -> dict[str, Any]:
    """Each SDPA kernel (and xformers) on bf16 inputs vs a float64 reference: output and input gradients."""
    from torch.nn.attention import sdpa_kernel

    b, heads, tokens, head_dim = suite.sizes.attention_shape
    shape = (min(b, 4), heads, tokens, head_dim)
    q, k, v = _attention_inputs(suite, shape, torch.bfloat16, seed=7)
    grad_out = torch.randn(shape, device=suite.device, generator=torch.Generator(device=suite.device).manual_seed(8))
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = torch.softmax(q64 @ k64.transpose(-2, -1) / math.sqrt(head_dim), dim=-1) @ v64
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), grad_out.double())

    candidates: dict[str, Callable[[], torch.Tensor]] = {}
    for name, kernel in _sdpa_backends().items():

        def run(kernel=kernel) -> torch.Tensor:
            with sdpa_kernel([kernel]):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v)

        candidates[name] = run
    candidates["xformers"] = lambda: _xformers_call(q, k, v)
    report = {}
    for name, fn in candidates.items():
        try:
            out = fn()
            grads = torch.autograd.grad(out, (q, k, v), grad_out.to(out.dtype))
            rel_out = _rel(out, ref)
            rel_grad = max(_rel(g, r) for g, r in zip(grads, ref_grads))
            ok = max(rel_out, rel_grad) < TOLERANCE["attention"]
            report[name] = {"rel_err_out": rel_out, "rel_err_grad": rel_grad, "ok": ok}
            log(
                f"  attention {name}: rel err out {rel_out:.2e}, grads {rel_grad:.2e} ({'ok' if ok else 'OUT OF TOLERANCE'})"
            )
        except Exception as exc:
            report[name] = {"unavailable": _first_line(exc)}
    return report
