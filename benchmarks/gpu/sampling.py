"""The ``sample`` section: Heun-50 with and without guidance, eager / CUDA graphs / compiled."""

from __future__ import annotations

import statistics
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

from pixelgen.samplers import GraphedDenoiser, build_sampler
from pixelgen.utils.flops import jit_flops

from .common import (
    GUIDED,
    HEUN,
    TOLERANCE,
    Suite,
    _attach_original,
    _first_line,
    _free,
    _rel,
    _sampling_inputs,
    build_backbone,
    compile_modes,
    profile,
)


def section_sample(suite: Suite) -> None:
    model = build_backbone(suite).eval()
    noise, labels, null = _sampling_inputs(suite, model, suite.sizes.sample_batch)
    per_row = jit_flops(model.config).forward
    variants = denoiser_variants(suite, model)
    wanted = suite.args.sample_variants
    eager_images: dict[str, torch.Tensor] = {}
    for label, make in variants:
        if wanted and label.replace(" ", "") not in wanted:
            continue
        for setting, extra in (("unguided", {}), ("guided", GUIDED)):
            name = f"sample Heun-{suite.sizes.sample_steps} {setting} ({label})"
            if not suite.within_budget(name):
                continue
            sampler = build_sampler("heun", num_steps=suite.sizes.sample_steps, **HEUN, **extra)
            try:
                time_sample_variant(suite, name, make(), setting, sampler, (noise, labels, null), per_row, eager_images)
            except Exception as exc:
                suite.add_result("sample", name, error=_first_line(exc), traceback=traceback.format_exc()[-3000:])
            _free()
        suite.save()
    del model, variants
    _free(compiled_code=True)


def denoiser_variants(suite: Suite, model: torch.nn.Module) -> list[tuple[str, Callable[[], Callable]]]:
    """(label, make the denoiser) for eager, CUDA graphs and, when --compile allows, the compiled pair (one compiled
    model shared by both, built on first use)."""
    compiled_model: list[Any] = []

    def eager() -> Callable:
        return model

    def graphs() -> Callable:
        return GraphedDenoiser(model)

    def compiled() -> Callable:
        if not compiled_model:
            # static shapes: one graph for B rows, one for the 2B rows of guided steps
            compiled_model.append(torch.compile(model, backend=suite.args.compile_backend, dynamic=False))
        return compiled_model[0]

    def compiled_graphs() -> Callable:
        return GraphedDenoiser(compiled())

    variants = [("eager", eager), ("cuda graphs", graphs)]
    if True in compile_modes(suite):
        variants += [("compiled", compiled), ("compiled + cuda graphs", compiled_graphs)]
    return variants


def time_sample_variant(
    suite: Suite,
    name: str,
    denoiser: Callable,
    setting: str,
    sampler: Any,
    inputs: tuple[torch.Tensor, ...],
    per_row: float,
    eager_images: dict[str, torch.Tensor],
) -> None:
    noise, labels, null = inputs
    batch = noise.shape[0]
    with torch.inference_mode(), suite.autocast():
        t0 = time.perf_counter()
        for rows, cond in ((batch, labels), (2 * batch, torch.cat([null, labels]))):  # both call shapes of the loop
            x = torch.cat([noise] * (rows // batch))
            for _ in range(2):
                denoiser(x, torch.full((rows,), 0.5, device=suite.device), cond)
        suite.sync()
        warmup_s = time.perf_counter() - t0
        if suite.cuda:
            torch.cuda.reset_peak_memory_stats(suite.device)
        times = []
        for _ in range(suite.args.sample_repeats):
            t0 = time.perf_counter()
            images = sampler(denoiser, noise, labels, null)
            suite.sync()
            times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    rows = sampler.last_stats["rows"]
    flops = rows * per_row
    tflops, mfu = suite.mfu(flops, seconds)
    reference = eager_images.setdefault(setting, images.float().clone())
    fields: dict[str, Any] = dict(
        ms=seconds * 1e3,
        images_per_s=batch / seconds,
        batch=batch,
        nfe=sampler.last_stats["nfe"],
        rows_per_image=rows / batch,
        flops_per_image=flops / batch,
        tflops=tflops,
        mfu=mfu,
        warmup_s=warmup_s,
        times_s=times,
        rel_err_vs_eager=_rel(images, reference),
    )
    fields["ok_vs_eager"] = fields["rel_err_vs_eager"] < TOLERANCE["compiled_images"]
    if suite.cuda:
        fields["peak_gib"] = torch.cuda.max_memory_allocated(suite.device) / 2**30
    _attach_original(suite, f"sample_{setting}", fields)
    suite.add_result("sample", name, **fields)
    if setting == "guided" and "graphs" not in name:  # a replayed graph shows as one launch
        label = "sample_" + name.split("(")[-1].rstrip(")").replace(" + ", "_").replace(" ", "_")
        t = torch.full((2 * batch,), 0.5, device=suite.device)
        x, cond = torch.cat([noise, noise]), torch.cat([null, labels])

        def call() -> None:
            with torch.inference_mode(), suite.autocast():
                denoiser(x, t, cond)

        profile(suite, call, label)
