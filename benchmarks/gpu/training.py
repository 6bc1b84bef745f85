"""The ``train`` section: the trainer's own optimiser step (``Trainer.optimizer_step``) at the paper's sizes.

Each variant builds a :class:`~pixelgen.train.Trainer` around the suite's backbone and objective, so what is timed
is what a training run executes per step: bf16 autocast, the objective, backward, the trainer's one host sync
for the logged values, fused AdamW (on CUDA), the learning-rate schedule and the EMA update.
"""

from __future__ import annotations

import itertools
import tempfile
import time
import traceback
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from pixelgen.train import Trainer
from pixelgen.train.config import DataConfig, ModelConfig, ObjectiveConfig, OptimConfig, SampleConfig, TrainConfig

from .common import (
    Suite,
    _attach_original,
    _first_line,
    _free,
    build_backbone,
    build_frozen,
    build_train_objective,
    compile_modes,
    profile,
    random_batch,
    step_flops,
)


def section_train(suite: Suite) -> None:
    frozen = build_frozen(suite)
    fast_frozen = build_frozen(suite, fast=True, like=frozen)
    for compiled in compile_modes(suite):
        mode = "compiled" if compiled else "eager"
        if not suite.within_budget(f"train ({mode})"):
            continue
        # One backbone per mode, shared by its variants (compiled once); each variant's Trainer makes its own EMA
        # copy (uncompiled, as in a run) and optimiser.
        model = build_backbone(suite).train()
        if compiled:
            torch._functorch.config.donated_buffer = False  # as the trainer does with compile=True
            model.compile(backend=suite.args.compile_backend)
        variants: list[tuple[str, str, bool, Any]] = [
            ("train_full", f"train full ({mode})", True, frozen),
            ("train_fm_repa", f"train FM+REPA ({mode})", False, frozen),
            ("train_full", f"train full, frozen bf16 + LPIPS NHWC ({mode})", True, fast_frozen),
        ]
        if compiled and suite.args.compile_encoders:
            variants.append(
                ("train_full", f"train full, frozen bf16 + NHWC, encoders compiled ({mode})", True, "compile")
            )
        for kind, name, perceptual, encoders in variants:
            if not suite.within_budget(name):
                continue
            if encoders == "compile":
                for encoder in fast_frozen.values():
                    encoder.compile(backend=suite.args.compile_backend)
                encoders = fast_frozen
            profile_as = f"train_{mode}" if name.startswith("train full (") else None
            try:
                time_train_variant(suite, kind, name, model, encoders, perceptual, compiled, profile_as)
            except Exception as exc:
                suite.add_result("train", name, error=_first_line(exc), traceback=traceback.format_exc()[-3000:])
            _free()
        del model
        _free(compiled_code=True)
        suite.save()
    del frozen, fast_frozen
    _free(compiled_code=True)


def train_config(suite: Suite, model: nn.Module, out_dir: str) -> TrainConfig:
    """A run configuration for the suite's parts: the paper's optimiser, bf16 autocast, no grids, no logs."""
    return TrainConfig(
        name="gpu_suite",
        out_dir=out_dir,
        model=ModelConfig(name=suite.sizes.model, overrides=dict(suite.sizes.model_overrides)),
        objective=ObjectiveConfig(),  # the objective is built by the suite and handed to the trainer
        data=DataConfig(dataset="demo", resolution=model.input_size, batch_size=suite.sizes.train_batch, num_workers=0),
        optim=OptimConfig(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
        sample=SampleConfig(num_images=0),
        precision="bf16",
        device=str(suite.device),
        ema_decay=0.9999,
        log_every=10**9,
        export_ema=False,
    )


def build_trainer(suite: Suite, model: nn.Module, encoders: dict[str, nn.Module], perceptual: bool, out_dir: str):
    """(trainer, endless batches): the backbone and a new objective inside a Trainer, on one fixed batch."""
    objective = build_train_objective(suite, model, encoders, perceptual)
    batch = random_batch(suite, model, suite.sizes.train_batch, seed=11)
    trainer = Trainer(
        train_config(suite, model, out_dir), model=model, objective=objective, loader=[batch], progress=False
    )
    return trainer, itertools.repeat(batch)


def time_train_variant(
    suite: Suite,
    kind: str,
    name: str,
    model: nn.Module,
    encoders: dict[str, nn.Module],
    perceptual: bool,
    compiled: bool,
    profile_as: str | None = None,
) -> None:
    with tempfile.TemporaryDirectory(prefix="gpu_suite_train_") as out_dir:
        trainer, batches = build_trainer(suite, model, encoders, perceptual, out_dir)
        try:
            fields = _time_steps(suite, trainer, batches)
            fields["compiled"] = compiled
            batch_size = suite.sizes.train_batch
            flops = step_flops(suite, trainer.model, batch_size, perceptual)
            fields["flops_per_image"] = None if flops is None else flops / batch_size
            fields["tflops"], fields["mfu"] = suite.mfu(flops, fields["ms"] / 1e3)
            _attach_original(suite, kind, fields)
            suite.add_result("train", name, **fields)
            if profile_as:
                profile(suite, lambda: trainer.optimizer_step(batches), profile_as)
        finally:
            trainer.close()


def _time_steps(suite: Suite, trainer: Trainer, batches: Iterator[dict[str, Any]]) -> dict[str, Any]:
    """Warm-up steps, then the timed steps in two halves (a drift between them shows in ``ms_halves``)."""
    first_values: dict[str, float] = {}

    def step() -> None:
        applied, values, problem = trainer.optimizer_step(batches)
        if not applied:
            raise FloatingPointError(f"the training step was not applied: {problem}")
        if not first_values:
            first_values.update(values)

    if suite.cuda:
        torch.cuda.reset_peak_memory_stats(suite.device)
    t0 = time.perf_counter()
    for _ in range(suite.args.warmup):
        step()
    suite.sync()
    warmup_s = time.perf_counter() - t0
    counts = (suite.args.steps // 2, suite.args.steps - suite.args.steps // 2)
    halves = []
    for count in counts:
        t0 = time.perf_counter()
        for _ in range(count):
            step()
        suite.sync()
        halves.append((time.perf_counter() - t0) / max(count, 1))
    seconds = sum(h * n for h, n in zip(halves, counts)) / suite.args.steps
    batch_size = suite.sizes.train_batch
    fields: dict[str, Any] = dict(
        ms=seconds * 1e3,
        ms_halves=[h * 1e3 for h in halves],
        images_per_s=batch_size / seconds,
        batch=batch_size,
        warmup_s=warmup_s,
        first_step_values=first_values,
    )
    if suite.cuda:
        fields["peak_gib"] = torch.cuda.max_memory_allocated(suite.device) / 2**30
        fields["peak_reserved_gib"] = torch.cuda.max_memory_reserved(suite.device) / 2**30
    return fields
