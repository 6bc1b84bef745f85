"""The training loop: one readable :class:`Trainer` for every recipe.

Per optimiser step::

    for each of grad_accum micro-batches:
        out = objective(model, batch, step=step)          # under autocast (bf16 on GPU by default)
        all ranks agree whether every loss value is finite
        (loss / grad_accum).backward()                      # DDP reduces on the last micro-batch only
    clip (optional) → AdamW step → lr schedule → EMA update → logs, sample grids, checkpoints

The model and the objective are wrapped together (:class:`TrainModules`), so DDP/FSDP also reduce the
gradients of the objective's trainable part (the REPA projector). A non-finite loss skips the whole step
(no optimiser and no EMA update), names the terms that were not finite, and after ``max_bad_steps`` in a row
the run stops with :class:`TrainingDiverged`, leaving the last good checkpoint untouched.

Randomness: the model and the objective are built from ``seed`` on every rank (identical initial weights);
the training draws then use ``seed + rank`` ("ranks seeded apart"). With ``per_sample_noise`` the batch also
carries ``seeds`` (B,) int64, one per sample, derived from (seed, global sample index): an objective that draws
sample i's t, noise and condition drop from ``torch.Generator().manual_seed(seeds[i])`` then gives the same
values however a global batch is split across processes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..seeding import offset_seed, sample_seeds, seed_only
from ..utils.io import atomic_save_json
from .checkpointing import CheckpointManager, capture_rng_state, load_training_checkpoint, restore_rng_state
from .config import TrainConfig, check_against_model
from .distributed import (
    DistInfo,
    all_gather_ints,
    all_gather_objects,
    any_true,
    barrier,
    cleanup_distributed,
    seed_everything,
    setup_distributed,
)
from .ema import EMA
from .metrics import MetricsLogger, plot_loss_curve, read_metrics, save_image_grid

__all__ = ["Trainer", "TrainModules", "TrainResult", "TrainingDiverged", "train", "autocast_dtype_for", "sample_seeds"]

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss was not finite for ``max_bad_steps`` optimiser steps in a row."""


@dataclass
class TrainResult:
    step: int
    out_dir: Path
    checkpoint: Path | None
    export_dir: Path | None
    stopped: str  # "max_steps" or "interrupted"
    last_loss: float | None


class TrainModules(nn.Module):
    """The backbone and the objective as one module, so one DDP/FSDP wrapper covers all trainable weights."""

    def __init__(self, model: nn.Module, objective: nn.Module):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        return self.objective(self.model, batch, step=step)


def autocast_dtype_for(precision: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on CUDA, no autocast elsewhere; ``bf16``/``fp16``: that dtype; ``fp32``: none."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def default_batch_transform(batch: dict[str, Any]) -> dict[str, Any]:
    """Dataset batches name the class ``label``; the objective wants ``cond`` (spec contract)."""
    if "cond" not in batch and "label" in batch:
        batch = {**batch, "cond": batch["label"]}
    return batch


class Trainer:
    """Builds everything from a :class:`TrainConfig` and runs :meth:`fit`.

    Parts can be injected (tests, custom recipes): ``model`` (a backbone following the contract),
    ``objective`` (called ``objective(model, batch, step=...)``), ``dataset`` (map-style, dict samples) or a
    ready ``loader``, ``batch_transform`` (dataset batch → objective batch, e.g. text encoding for T2I) and
    ``class_names`` (captions under the sample grid). ``resume``: a checkpoint path, ``"auto"`` (``latest`` in
    ``out_dir`` when present) or None.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        model: nn.Module | None = None,
        objective: nn.Module | None = None,
        dataset: Any = None,
        loader: Any = None,
        batch_transform: Callable[[dict[str, Any]], dict[str, Any]] = default_batch_transform,
        class_names: list[str] | None = None,
        resume: str | None = None,
        progress: bool = True,
    ):
        config.validate()
        self.config = config
        self.out_dir = Path(config.out_dir)
        self.batch_transform = batch_transform
        self.class_names = class_names
        self.progress = progress
        self._threads_before = torch.get_num_threads()
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)  # restored by close()
        self.dist: DistInfo = setup_distributed(config.device)
        self.device = self.dist.device
        self.amp_dtype = autocast_dtype_for(config.precision, self.device)
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision(config.matmul_precision)
        self.ckpt = CheckpointManager(self.out_dir)
        self.logger = MetricsLogger(self.out_dir, enabled=self.dist.is_main)
        self.step = 0
        self.samples_seen = 0  # global samples drawn so far, counted when per_sample_noise is on (seeds start here)
        self.bad_steps = 0

        # Identical initial weights on every rank: build under the run seed, then seed the ranks apart.
        seed_everything(config.seed)
        self.model = (model if model is not None else _build_model(config)).to(self.device)
        self.objective = (objective if objective is not None else _build_objective(config, self.model)).to(self.device)
        check_against_model(config, self.model, self.objective, data=dataset is None and loader is None)
        self.ema = EMA(self.model, config.ema_decay)
        self.modules = TrainModules(self.model, self.objective)
        self.train_step_module = self._wrap(self.modules)
        self.ema.track(self.model)  # FSDP2 replaced the parameter objects with sharded ones
        self.posthoc = _build_posthoc_ema(config, self.model)
        if config.compile:
            # The adaptive perceptual weight takes autograd.grad(..., retain_graph=True) through the compiled
            # graph, which donated buffers would break (spec §6.4).
            torch._functorch.config.donated_buffer = False
            self.model.compile()
        self.optimizer = self._build_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _warmup(config.optim.warmup_steps))
        seed_everything(config.seed + self.dist.rank)
        self.loader = loader if loader is not None else self._build_loader(dataset)
        if self.class_names is None:
            self.class_names = config.data.class_names or getattr(
                getattr(self.loader, "dataset", None), "class_names", None
            )

        # A checkpoint of this run wins; otherwise a new stage starts from init_from (also when resume="auto"
        # finds nothing yet, i.e. the first launch of a stage).
        path = None
        if resume is not None:
            path = self.ckpt.find_resume() if resume == "auto" else Path(resume)
        if path is not None:
            self._load_resume(path)
        elif config.init_from:
            self._init_from(config.init_from)

    # -- construction ------------------------------------------------------------------------------------
    def _wrap(self, modules: TrainModules) -> nn.Module:
        if not self.dist.distributed:
            return modules
        if self.config.strategy == "fsdp":
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh(self.device.type, (self.dist.world_size,))
            for tree in (self.model, self.ema.model):  # shard the EMA copy alike so its update stays local
                for block in _repeated_blocks(tree):
                    fully_shard(block, mesh=mesh)
                fully_shard(tree, mesh=mesh)
            fully_shard(modules, mesh=mesh)
            return modules
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(modules, device_ids=ids)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        o = self.config.optim
        model_params = [p for p in self.model.parameters() if p.requires_grad]  # frozen pos_embed left out
        objective_params = [p for p in self.objective.parameters() if p.requires_grad]  # the REPA projector
        groups = [{"params": model_params, "name": "model"}]
        if objective_params:
            groups.append({"params": objective_params, "name": "objective"})
        fused = (self.device.type == "cuda") if o.fused is None else o.fused
        return torch.optim.AdamW(
            groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay, fused=fused or None
        )

    def _build_loader(self, dataset: Any) -> Any:
        from ..data import build_loader

        c = self.config.data
        if dataset is None:
            dataset = _build_dataset(self.config)
        return build_loader(
            dataset,
            c.batch_size,
            num_workers=c.num_workers,
            seed=c.shuffle_seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )

    # -- state ---------------------------------------------------------------------------------------------
    def _full_state_dicts(self) -> tuple[dict, dict, dict, dict]:
        """(model, objective, ema, optimizer) state dicts with full tensors (gathered under FSDP)."""
        if self.config.strategy == "fsdp" and self.dist.distributed:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
                get_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            both = get_model_state_dict(self.modules, options=opts)
            model = {k[len("model.") :]: v for k, v in both.items() if k.startswith("model.")}
            objective = {k[len("objective.") :]: v for k, v in both.items() if k.startswith("objective.")}
            ema = get_model_state_dict(self.ema.model, options=opts)
            optim = get_optimizer_state_dict(self.modules, self.optimizer, options=opts)
            return model, objective, ema, optim
        return self.model.state_dict(), self.objective.state_dict(), self.ema.state_dict(), self.optimizer.state_dict()

    def _load_full_state_dicts(self, model: dict, objective: dict, ema: dict, optim: dict | None) -> None:
        if self.config.strategy == "fsdp" and self.dist.distributed:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
            both = {
                **{f"model.{k}": v for k, v in model.items()},
                **{f"objective.{k}": v for k, v in objective.items()},
            }
            set_model_state_dict(self.modules, both, options=opts)
            set_model_state_dict(self.ema.model, ema, options=opts)
            if optim is not None:
                set_optimizer_state_dict(self.modules, self.optimizer, optim, options=opts)
            return
        self.model.load_state_dict(model)
        self.objective.load_state_dict(objective)
        self.ema.load_state_dict(ema)
        if optim is not None:
            self.optimizer.load_state_dict(optim)

    def state_dict(self) -> dict[str, Any]:
        """The full training state (call on every rank: RNG states and FSDP shards are gathered)."""
        model, objective, ema, optim = self._full_state_dicts()
        rng = all_gather_objects(capture_rng_state())
        return {
            "step": self.step,
            "samples_seen": self.samples_seen,
            "bad_steps": self.bad_steps,
            "world_size": self.dist.world_size,
            "config": self.config.to_dict(),
            "model": model,
            "objective": objective,
            "ema": ema,
            "optimizer": optim,
            "scheduler": self.scheduler.state_dict(),
            "data": self.loader.state_dict() if hasattr(self.loader, "state_dict") else None,
            "rng": rng,
            **({"posthoc_ema": self.posthoc.state_dict()} if self.posthoc is not None else {}),
        }

    def save_checkpoint(self) -> Path | None:
        state = self.state_dict()
        path = None
        if self.dist.is_main:
            keep = self.step > 0 and self.step % self.config.keep_every == 0
            path = self.ckpt.save(state, keep=keep)
            self.logger.event(self.step, "checkpoint", path=str(path), kept=keep)
        barrier()
        return path

    def _load_resume(self, path: Path) -> None:
        state = load_training_checkpoint(path)
        self._load_full_state_dicts(state["model"], state["objective"], state["ema"], state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.posthoc is not None:
            if "posthoc_ema" not in state:
                raise ValueError(
                    f"{path} was written without post-hoc EMA, which can only start at step 0 (start a new stage "
                    "with init_from, or turn posthoc_ema.sigma_rels off for this run)."
                )
            self.posthoc.load_state_dict(state["posthoc_ema"])
        self.step, self.samples_seen, self.bad_steps = (
            int(state["step"]),
            int(state["samples_seen"]),
            int(state["bad_steps"]),
        )
        if state.get("data") is not None and hasattr(self.loader, "load_state_dict"):
            self.loader.load_state_dict(state["data"])
        if int(state["world_size"]) == self.dist.world_size:
            restore_rng_state(state["rng"][self.dist.rank])
        else:
            log.warning(
                "Resuming a %d-process run with %d processes: RNG streams are re-seeded, so the run continues "
                "correctly but not bit-identically.",
                int(state["world_size"]),
                self.dist.world_size,
            )
            seed_everything(self.config.seed + self.dist.rank + 7919 * self.step)
        self.logger.event(self.step, "resume", path=str(path))
        log.info("Resumed from %s at step %d.", path, self.step)

    def _init_from(self, source: str) -> None:
        """Stage transition (spec §6.6): weights and EMA from ``source``, fresh optimiser, step 0."""
        path = Path(source)
        if (path / "model.safetensors").is_file() or path.suffix == ".safetensors":
            from ..utils.io import load_safetensors

            weights = load_safetensors(path / "model.safetensors" if path.is_dir() else path)
            model_sd, ema_sd, objective_sd = weights, weights, None
        else:
            state = load_training_checkpoint(path)
            model_sd, ema_sd, objective_sd = state["model"], state["ema"], state["objective"]
        _load_weights(self.model, model_sd)
        _load_weights(self.ema.model, ema_sd)
        if objective_sd is not None:
            self.objective.load_state_dict(objective_sd)
        self.logger.event(0, "init_from", path=str(path))
        log.info("Initialised weights and EMA from %s (new optimiser, step 0).", path)

    # -- the loop ------------------------------------------------------------------------------------------
    def batches(self) -> Iterator[dict[str, Any]]:
        """Endless training batches, epoch after epoch, continuing from the loader's saved position."""
        while True:
            self._seed_loader_iterator()
            empty = True
            for batch in self.loader:
                empty = False
                yield batch
            if empty:
                raise RuntimeError("The data loader yielded no batch for a whole epoch; the dataset is empty.")

    def _seed_loader_iterator(self) -> None:
        """Give the DataLoader a generator seeded by (seed, rank, epoch) before each epoch's iterator is made.

        A DataLoader draws its workers' base seed from the global torch RNG whenever an iterator is created;
        a resumed run creates one at a different moment than an uninterrupted run, which would shift every
        later random draw. With its own per-epoch generator the global stream stays untouched.
        """
        inner = getattr(self.loader, "loader", self.loader)
        if isinstance(inner, torch.utils.data.DataLoader):
            epoch = int(getattr(getattr(self.loader, "sampler", None), "epoch", 0))
            inner.generator = seed_only(
                offset_seed(0, (self.config.seed, 1_000_003), (self.dist.rank, 7919), (epoch, 1))
            )

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _attach_seeds(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Per-sample seeds from the global sample index (see the module docstring)."""
        local = _batch_size(batch)
        sizes = all_gather_ints(local, self.device)
        offset = self.samples_seen + sum(sizes[: self.dist.rank])
        self.samples_seen += sum(sizes)
        return {**batch, "seeds": sample_seeds(self.config.seed, offset, local)}

    def _micro_step(
        self, batch: dict[str, Any], sync: bool
    ) -> tuple[torch.Tensor | None, dict[str, float], str | None]:
        """Forward one micro-batch; returns (loss to back-propagate or None, logged values, problem)."""
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)
        no_sync = (
            contextlib.nullcontext()
            if sync or not hasattr(self.train_step_module, "no_sync")
            else self.train_step_module.no_sync()
        )
        if hasattr(self.train_step_module, "set_requires_gradient_sync"):  # FSDP2: reduce on the last micro-batch only
            self.train_step_module.set_requires_gradient_sync(sync)
        problem = None
        with no_sync, autocast:
            try:
                out = self.train_step_module(batch, self.step)
            except FloatingPointError as exc:  # the objective names a non-finite term itself
                out, problem = None, str(exc)
        values: dict[str, float] = {}
        if out is not None:
            names = list(out)
            flat = torch.stack([out[k].detach().float().reshape(()) for k in names]).tolist()  # one host sync
            values = dict(zip(names, flat))
            bad = [k for k, v in values.items() if not math.isfinite(v)]
            if bad:
                problem = "non-finite " + ", ".join(f"{k}={values[k]}" for k in bad)
        if any_true(problem is not None, self.device):
            return None, values, problem or "another rank had a non-finite loss"
        return out["loss"], values, None

    def optimizer_step(self, batches: Iterator[dict[str, Any]]) -> tuple[bool, dict[str, float], str | None]:
        """One optimiser step over ``grad_accum`` micro-batches from ``batches`` (see :meth:`batches`).

        Returns (applied, values averaged over the micro-batches, problem): a step with a non-finite loss is
        not applied (no optimiser and no EMA update) and ``problem`` names the terms. Does not advance ``step``
        (:meth:`fit` does, with logging and checkpoints); benchmarks call it directly.
        """
        accum = self.config.optim.grad_accum
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for micro in range(accum):
            batch = self._to_device(self.batch_transform(next(batches)))
            if self.config.per_sample_noise:
                batch = self._attach_seeds(batch)
            loss, values, problem = self._micro_step(batch, sync=micro == accum - 1)
            if problem is not None:
                self.optimizer.zero_grad(set_to_none=True)
                return False, values, problem
            (loss / accum).backward()
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v / accum
        if self.config.optim.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]], self.config.optim.grad_clip
            )
            sums["grad_norm"] = float(norm)
            if not math.isfinite(sums["grad_norm"]):
                self.optimizer.zero_grad(set_to_none=True)
                return False, sums, f"non-finite gradient norm {sums['grad_norm']}"
        sums["lr"] = self.optimizer.param_groups[0]["lr"]  # the rate this step used
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update()
        return True, sums, None

    def fit(self) -> TrainResult:
        """Train until ``max_steps`` (resumed runs continue from their step).

        Ctrl-C or SIGTERM (a scheduler's preemption) ends the run after the current step, all ranks together,
        with a checkpoint, the sample grid and the export, as at a normal end (``stopped="interrupted"``).
        """
        with _stop_on_sigterm() as stop_requested:
            return self._fit(stop_requested)

    def _fit(self, stop_requested: Callable[[], bool]) -> TrainResult:
        c = self.config
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.ckpt.remove_stale_temporaries()
            if self.posthoc is not None:
                from .posthoc_ema import remove_stale_temporaries

                remove_stale_temporaries(self.out_dir)
            atomic_save_json(c.to_dict(), self.out_dir / "config.json")
        self.modules.train()
        batches = self.batches()
        global_batch = c.data.batch_size * c.optim.grad_accum * self.dist.world_size
        bar = _progress(self.step, c.max_steps, enabled=self.progress and self.dist.is_main)
        last_loss, stopped, window_start, window_steps = None, "max_steps", time.perf_counter(), 0
        checkpoint, saved_at = None, -1
        try:
            while self.step < c.max_steps:
                if any_true(stop_requested(), self.device):
                    stopped = "interrupted"
                    log.warning("Stop requested (SIGTERM) at step %d; saving a checkpoint.", self.step)
                    break
                applied, values, problem = self.optimizer_step(batches)
                if not applied:
                    self._on_bad_step(values, problem)
                    continue
                self.bad_steps = 0
                self.step += 1
                if self.posthoc is not None:
                    self._posthoc_update()
                window_steps += 1
                last_loss = values.get("loss", last_loss)
                if bar is not None:
                    rate = global_batch * window_steps / max(time.perf_counter() - window_start, 1e-9)
                    # refresh=False: update() redraws at tqdm's rate limit instead of on every step
                    bar.set_postfix(loss=f"{values.get('loss', float('nan')):.4f}", img_s=f"{rate:.1f}", refresh=False)
                    bar.update(1)
                if self.step % c.log_every == 0 or self.step == c.max_steps:
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    values = {**self._mean_over_ranks(values), "images_per_s": global_batch * window_steps / elapsed}
                    self.logger.log(self.step, values)
                    window_start, window_steps = time.perf_counter(), 0
                if c.sample.num_images and self.step % c.sample.every == 0:
                    self.sample_grid()
                if self.step % c.ckpt_every == 0 or self.step % c.keep_every == 0:
                    checkpoint, saved_at = self.save_checkpoint(), self.step
        except KeyboardInterrupt:
            stopped = "interrupted"
            log.warning("Interrupted at step %d; saving a checkpoint.", self.step)
        finally:
            if bar is not None:
                bar.close()
        if self.posthoc is not None and self.step > 0 and not self.posthoc.due(self.step):
            self.save_posthoc_snapshot()  # the stopping point can be reconstructed too
        if saved_at != self.step:
            checkpoint = self.save_checkpoint()
        if c.sample.num_images and self.step % c.sample.every != 0:
            self.sample_grid()
        export_dir = self.export() if c.export_ema else None
        self._finish_logs()
        return TrainResult(self.step, self.out_dir, checkpoint, export_dir, stopped, last_loss)

    def _posthoc_update(self) -> None:
        self.posthoc.update(self.step)
        if self.posthoc.due(self.step):
            self.save_posthoc_snapshot()

    def save_posthoc_snapshot(self) -> None:
        """Write the post-hoc EMA snapshot of this step: every rank its shards under FSDP, else rank 0."""
        sharded = self.config.strategy == "fsdp" and self.dist.distributed
        if sharded or self.dist.is_main:
            started = time.perf_counter()
            paths = self.posthoc.save_snapshot(
                self.out_dir, self.step, rank=self.dist.rank, world_size=self.dist.world_size
            )
            if self.dist.is_main:
                self.logger.event(
                    self.step,
                    "posthoc_ema_snapshot",
                    files=len(paths),
                    bytes=sum(p.stat().st_size for p in paths),
                    seconds=round(time.perf_counter() - started, 4),
                )

    def _mean_over_ranks(self, values: dict[str, float]) -> dict[str, float]:
        """Logged values averaged over ranks (each rank's are means over its own part of the batch)."""
        if not self.dist.distributed:
            return values
        names = sorted(values)
        t = torch.tensor([values[k] for k in names], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return dict(zip(names, (t / self.dist.world_size).tolist()))

    def _on_bad_step(self, values: dict[str, float], problem: str | None) -> None:
        self.bad_steps += 1
        log.warning("Step %d skipped (%d in a row): %s.", self.step + 1, self.bad_steps, problem)
        self.logger.event(self.step, "skipped_step", reason=problem, in_a_row=self.bad_steps, **values)
        if self.bad_steps >= self.config.max_bad_steps:
            self._finish_logs()
            raise TrainingDiverged(
                f"The loss was not finite for {self.bad_steps} steps in a row (last: {problem}); stopped at step "
                f"{self.step}, the last good checkpoint is {self.ckpt.latest if self.ckpt.latest.exists() else 'none'}."
            )

    def _finish_logs(self) -> None:
        if self.dist.is_main:
            if self.logger.path.is_file():
                plot_loss_curve(read_metrics(self.logger.path), self.out_dir / "loss_curve.png")
            self.logger.close()

    # -- outputs -------------------------------------------------------------------------------------------
    def grid_labels(self) -> list[int]:
        s = self.config.sample
        if s.labels is not None:
            return list(s.labels)
        num_classes = int(getattr(self.model, "num_classes", 1000))
        return [i * num_classes // s.num_images for i in range(s.num_images)]

    @torch.no_grad()
    def sample_grid(self) -> Path | None:
        """A PNG grid from the EMA model with fixed labels and noise (``<out>/samples/step_XXXXXXX.png``)."""
        s = self.config.sample
        everyone = self.config.strategy == "fsdp" and self.dist.distributed  # sharded EMA: every rank must run
        path = None
        if self.dist.is_main or everyone:
            from ..generate import generate
            from ..samplers import build_sampler

            labels = self.grid_labels()
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                images = generate(
                    self.ema.model,
                    torch.tensor(labels, dtype=torch.long),
                    sampler=build_sampler(s.sampler, **s.params),
                    seed=s.seed,
                    batch_size=s.batch_size,
                    device=self.device,
                    autocast_dtype=self.amp_dtype,
                    progress=False,
                )
            if self.dist.is_main:
                captions = [self.class_names[i] for i in labels] if self.class_names else None
                path = save_image_grid(
                    images, self.out_dir / "samples" / f"step_{self.step:07d}.png", captions=captions
                )
                self.logger.event(self.step, "samples", path=str(path))
        barrier()
        return path

    def export(self) -> Path | None:
        """EMA weights as ``<out>/export/model.safetensors`` + ``config.json`` (``pixelgen.load_pretrained``)."""
        from ..checkpoint import save_pretrained

        target = self.out_dir / "export"
        if self.config.strategy == "fsdp" and self.dist.distributed:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            full = get_model_state_dict(
                self.ema.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
            if self.dist.is_main:
                from ..backbones import build_model

                plain = build_model(self.model.arch, **self.model.config)
                plain.load_state_dict(full)
                save_pretrained(plain, target, extra=self._export_extra())
        elif self.dist.is_main:
            save_pretrained(self.ema.model, target, extra=self._export_extra())
        barrier()
        return target if self.dist.is_main else None

    def _export_extra(self) -> dict[str, Any] | None:
        """What later tools read from the export besides the weights: the class names (captions, the app)."""
        return {"class_names": list(self.class_names)} if self.class_names else None

    def close(self) -> None:
        self.logger.close()
        cleanup_distributed(self.dist)
        torch.set_num_threads(self._threads_before)


def train(config: TrainConfig, *, resume: str | None = None, **parts: Any) -> TrainResult:
    """Build a :class:`Trainer`, run it, and release the process group (the recipes' entry point)."""
    if config.text is not None:  # text-to-image: the trainer with a text encoder
        from .text import T2ITrainer

        trainer: Trainer = T2ITrainer(config, resume=resume, **parts)
    else:
        trainer = Trainer(config, resume=resume, **parts)
    try:
        return trainer.fit()
    finally:
        trainer.close()


# -- helpers -----------------------------------------------------------------------------------------------
def _build_model(config: TrainConfig) -> nn.Module:
    from ..backbones import build_model

    return build_model(config.model.name, **config.model.overrides)


def _build_objective(config: TrainConfig, model: nn.Module) -> nn.Module:
    from ..losses import build_objective

    overrides = dict(config.objective.overrides)
    # _micro_step reads every term once (one host sync) and names the non-finite ones: the objective's own
    # finiteness check would be a second sync per micro-batch.
    overrides.setdefault("check_finite", False)
    return build_objective(preset=config.objective.preset, model=model, **overrides)


def _build_posthoc_ema(config: TrainConfig, model: nn.Module) -> Any:
    if not config.posthoc_ema.sigma_rels:
        return None
    from .posthoc_ema import PostHocEMA

    c = config.posthoc_ema
    return PostHocEMA(model, c.sigma_rels, every=c.every, dtype=c.dtype)


def _build_dataset(config: TrainConfig) -> Any:
    from ..registry import registries

    c = config.data
    kwargs: dict[str, Any] = {"resolution": c.resolution, **c.options}
    if c.root is not None:
        kwargs["root"] = c.root
    if c.flip:
        kwargs["flip"] = True
    return registries.dataset.build(c.dataset, **kwargs)


def _warmup(steps: int) -> Callable[[int], float]:
    if steps <= 0:
        return lambda _: 1.0
    return lambda s: min(1.0, (s + 1) / steps)


def _batch_size(batch: dict[str, Any]) -> int:
    for key in ("image", "raw"):
        if isinstance(batch.get(key), torch.Tensor):
            return int(batch[key].shape[0])
    raise KeyError("A training batch needs an 'image' tensor (B, 3, S, S).")


def _repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks (members of ModuleLists): the units FSDP2 shards one by one."""
    return [block for m in model.modules() if isinstance(m, nn.ModuleList) for block in m]


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` strictly, except a frozen sin-cos ``pos_embed`` whose grid differs: the new model keeps its
    own table, regenerated for the new resolution (spec §6.10)."""
    own = model.state_dict()
    kept = {}
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            if not k.endswith("pos_embed"):
                raise ValueError(
                    f"Cannot initialise from this checkpoint: {k} has shape {tuple(v.shape)} there but {tuple(own[k].shape)} here."
                )
            log.info("Keeping the new model's %s %s (the checkpoint's is %s).", k, tuple(own[k].shape), tuple(v.shape))
            continue
        kept[k] = v
    missing, unexpected = model.load_state_dict(kept, strict=False)
    missing = [k for k in missing if k not in state]  # only the regenerated tables may be missing
    if missing or unexpected:
        raise ValueError(
            f"The checkpoint does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}."
        )


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[Callable[[], bool]]:
    """While active, SIGTERM sets a flag (read through the yielded function) instead of killing the process."""
    received = []
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield lambda: False
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: received.append(True))
    try:
        yield lambda: bool(received)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _progress(start: int, total: int, *, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="train", dynamic_ncols=True)
