"""The training loop: one readable :class:`Trainer` for every recipe.

Per optimiser step::

    for each of grad_accum micro-batches:
        out = objective(model, batch, step=step)          # under autocast (bf16 on GPU by default)
        (loss / grad_accum).backward()                      # DDP reduces on the last micro-batch only
    per-parameter gradient norms (one fused kernel) → finite flag of the loss terms and the norm, agreed by ranks
    clip (optional) → AdamW step → lr schedule → EMA update, all skipped where the flag says "not finite"

No step reads a value back to the host in steady state: with the fused AdamW (the default on CUDA) a step
that is not finite is skipped on the device (the optimiser's ``found_inf``, an EMA weight of zero), and the
host reads the flags and the logged values only every ``log_every`` steps and before a checkpoint, a sample
grid or the end. Other optimisers read the flag after each backward pass. Either way a skipped step is not
counted: the step counter, the lr schedule and the run's outputs are as if it had never been tried (when found
late, the counter and the schedule are wound back), it is logged with the loss terms and the parameters that
were not finite, and after ``max_bad_steps`` in a row the run stops with :class:`TrainingDiverged`. A state
that is not finite is never written.

The parts live in their own modules: data parallelism (:mod:`.parallel`), what a checkpoint holds
(:mod:`.state`), checkpoint files (:mod:`.checkpointing`), the run folder's lock (:mod:`.run_folder`), seeds
(:mod:`.seeding`), logs (:mod:`.metrics`), ranks and timeouts (:mod:`pixelgen.distributed`).

Callbacks: ``trainer.add_callback("after_step", fn)`` calls ``fn(trainer, record)`` after every optimiser step
(``record`` is a :class:`StepRecord`; its flag stays on the device unless read); ``"after_checkpoint"`` gets
``fn(trainer, path)``, ``"end"`` gets ``fn(trainer, result)``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..backbones.common import values_checked_by_caller
from ..distributed import (
    DistInfo,
    ProgressBeacon,
    RankStoppedAnswering,
    all_gather_ints,
    all_reduce_mean_,
    all_reduce_min_,
    any_true,
    barrier,
    broadcast_object,
    cleanup_distributed,
    explain_collective_failure,
    looks_like_collective_failure,
    setup_distributed,
)
from ..losses.objective import Objective
from ..utils.checks import check_labels
from ..utils.images import save_image_grid
from ..utils.io import DiskFullError, FolderNotWritableError, WriteError, atomic_save_json, remove_stale_temporaries
from .checkpointing import CheckpointManager, load_training_checkpoint
from .config import TrainConfig, check_against_model
from .ema import EMA
from .metrics import MetricsLogger, RunLog, format_progress, plot_loss_curve, read_metrics
from .parallel import TrainModules, full_ema_state, wrap_for_training
from .run_folder import RunFolderError, RunLock, prepare_run_folder, truncate_metrics
from .seeding import loader_generator, rank_seed, sample_seeds, seed_everything
from .state import init_weights_from, non_finite_entries, restore_training_state, training_state

__all__ = [
    "Trainer",
    "TrainModules",
    "TrainResult",
    "StepRecord",
    "TrainingDiverged",
    "train",
    "autocast_dtype_for",
    "sample_seeds",
]

log = logging.getLogger(__name__)

CALLBACK_EVENTS = ("after_step", "after_checkpoint", "end")


class TrainingDiverged(RuntimeError):
    """Steps were not finite ``max_bad_steps`` times in a row, or the training state itself was not finite."""


@dataclass
class TrainResult:
    step: int
    out_dir: Path
    checkpoint: Path | None
    export_dir: Path | None
    stopped: str  # "max_steps" or "interrupted"
    last_loss: float | None


@dataclass
class StepRecord:
    """One optimiser step as the device saw it. ``ok`` (0-d bool, the same on every rank) and ``values`` stay on
    the device until read; ``applied``/``read()`` read them (a host sync)."""

    ok: torch.Tensor
    values: torch.Tensor  # float64 (K,): the logged values averaged over the micro-batches
    names: list[str]
    lr: float
    grad_norms: torch.Tensor | None = None  # per-parameter gradient norms (P,)
    param_names: list[str] = field(default_factory=list)
    problem: str | None = None  # what the objective itself reported (a raised FloatingPointError)
    known_ok: bool | None = None  # the flag, once read
    scheduled: bool = False  # whether the lr schedule advanced for this step

    @property
    def applied(self) -> bool:
        if self.known_ok is None:
            self.known_ok = bool(self.ok.item())
        return self.known_ok

    def value_dict(self) -> dict[str, float]:
        return {**dict(zip(self.names, self.values.tolist())), "lr": self.lr}

    def describe(self) -> str:
        """Why the step was skipped: the loss terms, else the parameters whose gradient was not finite."""
        values = self.value_dict()
        parts = [self.problem] if self.problem else []
        bad_terms = _bad_terms(values)
        if bad_terms:
            parts.append(bad_terms)
        elif self.grad_norms is not None:
            norms = self.grad_norms.tolist()
            bad = [n for n, v in zip(self.param_names, norms) if not math.isfinite(v)]
            if bad:
                more = f" and {len(bad) - 6} more" if len(bad) > 6 else ""
                parts.append(
                    f"non-finite gradient (norm {values.get('grad_norm')}) in {len(bad)} parameter(s): "
                    f"{', '.join(bad[:6])}{more}"
                )
        return "; ".join(parts) or "another rank had a non-finite loss or gradient"

    def read(self) -> tuple[bool, dict[str, float], str | None]:
        applied = self.applied
        return applied, self.value_dict(), None if applied else self.describe()

    def __iter__(self):  # ``applied, values, problem = trainer.optimizer_step(...)``
        return iter(self.read())


def _bad_terms(values: dict[str, float]) -> str | None:
    """The objective's sentence naming the non-finite loss terms among the logged ``values``, or None."""
    try:
        Objective.check_values({k: v for k, v in values.items() if k not in ("grad_norm", "lr")})
    except FloatingPointError as exc:
        return str(exc)
    return None


def autocast_dtype_for(precision: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on CUDA, no autocast elsewhere; ``bf16``/``fp16``: that dtype; ``fp32``: none."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def default_batch_transform(batch: dict[str, Any]) -> dict[str, Any]:
    """Dataset batches name the class ``label``; the objective wants ``cond``."""
    if "cond" not in batch and "label" in batch:
        batch = {**batch, "cond": batch["label"]}
    return batch


class Trainer:
    """Builds everything from a :class:`TrainConfig` and runs :meth:`fit`.

    Parts can be injected (tests, custom recipes): ``model`` (a backbone following the contract),
    ``objective`` (called ``objective(model, batch, step=...)``), ``dataset`` (map-style, dict samples) or a
    ready ``loader``, ``batch_transform`` (dataset batch → objective batch, e.g. text encoding for T2I) and
    ``class_names`` (captions under the sample grid). ``resume``: a checkpoint path, ``"auto"`` (``latest`` in
    ``out_dir`` when present) or None. A run folder that already holds a run is refused unless ``resume`` is
    given or ``overwrite=True`` (which removes the previous run's outputs); one run writes a folder at a time.
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
        overwrite: bool = False,
        progress: bool = True,
    ):
        config.validate()
        self.config = config
        self.out_dir = Path(config.out_dir)
        self.batch_transform = batch_transform
        self.class_names = class_names
        self.callbacks: dict[str, list[Callable]] = {event: [] for event in CALLBACK_EVENTS}
        self._threads_before = torch.get_num_threads()
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)  # restored by close()
        self.dist: DistInfo = setup_distributed(config.device, timeout_minutes=config.dist_timeout_minutes)
        self.lock = RunLock(self.out_dir)
        self.logger: MetricsLogger | None = None
        self.run_log = RunLog(self.out_dir, enabled=False)
        self.beacon = ProgressBeacon(self.dist)
        try:
            self._build(model, objective, dataset, loader, resume, overwrite, progress)
        except BaseException:
            self.close()
            raise

    def _build(self, model, objective, dataset, loader, resume, overwrite, progress) -> None:
        config = self.config
        self.device = self.dist.device
        self.amp_dtype = autocast_dtype_for(config.precision, self.device)
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision(config.matmul_precision)
        self._claim_run_folder(resuming=resume is not None, overwrite=overwrite)
        self.show_bar = progress and self.dist.is_main and sys.stderr.isatty()
        self.ckpt = CheckpointManager(self.out_dir)
        self.logger = MetricsLogger(self.out_dir, enabled=self.dist.is_main)
        self.run_log = RunLog(self.out_dir, enabled=self.dist.is_main, echo=not self.show_bar)
        self.step = 0
        self.samples_seen = 0  # global samples drawn so far, counted when per_sample_noise is on (seeds start here)
        self.bad_steps = 0
        self.last_good_checkpoint: tuple[Path, int] | None = None  # written (or resumed) by this trainer, finite

        # Identical initial weights on every rank: build under the run seed, then seed the ranks apart.
        seed_everything(config.seed)
        self.model = (model if model is not None else _build_model(config)).to(self.device)
        self.objective = (objective if objective is not None else _build_objective(config, self.model)).to(self.device)
        check_against_model(config, self.model, self.objective, data=dataset is None and loader is None)
        self.ema = EMA(self.model, config.ema_decay)
        self.modules = TrainModules(self.model, self.objective)
        self.train_step_module = wrap_for_training(self.modules, self.ema.model, self.dist, config.strategy)
        self.ema.track(self.model)  # FSDP2 replaced the parameter objects with sharded ones
        self.posthoc = _build_posthoc_ema(config, self.model)
        if config.compile:
            # The adaptive perceptual weight takes autograd.grad(..., retain_graph=True) through the compiled
            # graph, which donated buffers would break.
            torch._functorch.config.donated_buffer = False
            self.model.compile()
        self.optimizer = self._build_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _warmup(config.optim.warmup_steps))
        self._named_params = [
            (f"{prefix}.{n}", p)
            for prefix, part in (("model", self.model), ("objective", self.objective))
            for n, p in part.named_parameters()
            if p.requires_grad
        ]
        seed_everything(rank_seed(config.seed, self.dist.rank))
        self.loader = loader if loader is not None else self._build_loader(dataset)
        if self.class_names is None:
            self.class_names = config.data.class_names or getattr(
                getattr(self.loader, "dataset", None), "class_names", None
            )
        self._check_output_settings()

        # A checkpoint of this run wins; otherwise a new stage starts from init_from (also when resume="auto"
        # finds nothing yet, i.e. the first launch of a stage).
        path = None
        if resume is not None:
            path = self.ckpt.find_resume() if resume == "auto" else Path(resume)
        if path is not None:
            self._load_resume(path)
        elif config.init_from:
            source = init_weights_from(self, config.init_from)
            self.logger.event(0, "init_from", path=str(source))
            self.run_log.info(f"Initialised weights and EMA from {source} (new optimiser, step 0).")
        if self.dist.is_main and resume is not None:
            dropped = truncate_metrics(self.logger.path, self.step)
            if dropped:
                self.run_log.info(f"Dropped {dropped} metrics row(s) after step {self.step} (they are redone now).")

    # -- construction ------------------------------------------------------------------------------------
    def _claim_run_folder(self, *, resuming: bool, overwrite: bool) -> None:
        """Lock the run folder, refuse to clobber another run, and delete dead writers' temporary files
        (rank 0; every rank raises the same sentence)."""
        problem = None
        if self.dist.is_main:
            try:
                self.lock.acquire()
                prepare_run_folder(self.out_dir, resuming=resuming, overwrite=overwrite)
                remove_stale_temporaries(self.out_dir)  # the whole run folder: checkpoints, samples, snapshots
            except (RunFolderError, WriteError) as exc:
                problem = exc
        message = broadcast_object(None if problem is None else (type(problem).__name__, str(problem)))
        if problem is not None:
            raise problem
        if message is not None:
            kind, text = message
            raise _ERRORS.get(kind, WriteError)(text)

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

    @property
    def skips_on_device(self) -> bool:
        """Whether a non-finite step is skipped on the device (fused Adam/AdamW take a ``found_inf`` flag)."""
        return isinstance(self.optimizer, torch.optim.Adam | torch.optim.AdamW) and bool(
            self.optimizer.defaults.get("fused")
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

    def _check_output_settings(self) -> None:
        """Build now what the run uses later (the grid's sampler and labels, the export), so a bad setting fails
        before step 0 rather than after ``sample.every`` steps."""
        s = self.config.sample
        if s.num_images:
            from ..samplers import build_sampler

            if s.batch_size < 1:
                raise ValueError(f"sample.batch_size must be >= 1, got {s.batch_size}.")
            try:
                self.grid_sampler = build_sampler(s.sampler, **s.params)
            except (KeyError, TypeError, ValueError) as exc:
                message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
                raise ValueError(
                    f"The sample-grid settings are not usable (sample.sampler/params): {message}"
                ) from None
            if getattr(self.model, "cond_kind", "class") == "class":
                self._checked_grid_labels()
        if self.config.export_ema and not (hasattr(self.model, "arch") and hasattr(self.model, "config")):
            raise ValueError(
                "export_ema=true needs a backbone with `arch` and `config` (pixelgen.save_pretrained writes them); "
                "set export_ema=false for this model."
            )

    def add_callback(self, event: str, fn: Callable) -> None:
        """Call ``fn`` at ``event``: ``after_step`` (trainer, StepRecord), ``after_checkpoint`` (trainer, path),
        ``end`` (trainer, TrainResult)."""
        if event not in self.callbacks:
            raise ValueError(f"Unknown callback event {event!r}; known: {', '.join(CALLBACK_EVENTS)}.")
        self.callbacks[event].append(fn)

    def _emit(self, event: str, *args: Any) -> None:
        for fn in self.callbacks[event]:
            fn(self, *args)

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The full training state (call on every rank: RNG states and FSDP shards are gathered)."""
        return training_state(self)

    def _last_good_text(self) -> str:
        if self.last_good_checkpoint is None:
            return "no checkpoint of this run has been written yet"
        path, step = self.last_good_checkpoint
        return f"the last good checkpoint is {path} (step {step})"

    def save_checkpoint(self) -> Path | None:
        """Write ``latest.pt`` (and a kept copy every ``keep_every`` steps) after checking that every tensor of
        the state is finite; a state that is not is never written (:class:`TrainingDiverged`). A full disk or a
        folder that cannot be written raises a :class:`~pixelgen.utils.io.WriteError` on every rank, with the
        previous checkpoint kept."""
        state = self.state_dict()
        problem = None
        if self.dist.is_main:
            bad = non_finite_entries(state)
            if bad:
                more = f" and {len(bad) - 6} more" if len(bad) > 6 else ""
                problem = (
                    "TrainingDiverged",
                    f"The training state at step {self.step} is not finite ({', '.join(bad[:6])}{more}), so it was "
                    f"not saved; {self._last_good_text()}.",
                )
        path = None
        if problem is None and self.dist.is_main:
            keep = self.step > 0 and self.step % self.config.keep_every == 0
            try:
                path = self.ckpt.save(state, keep=keep)
            except WriteError as exc:
                problem = (type(exc).__name__, str(exc))
            else:
                self.last_good_checkpoint = (path, self.step)
                self.logger.event(self.step, "checkpoint", path=str(path), kept=keep)
                self.run_log.progress(f"checkpoint {path} (step {self.step}{', kept' if keep else ''})")
        del state
        problem = broadcast_object(problem)
        if problem is not None:
            kind, text = problem
            self.run_log.warning(text)
            raise _ERRORS.get(kind, WriteError)(text)
        barrier()
        self._emit("after_checkpoint", path)
        return path

    def _load_resume(self, path: Path) -> None:
        state = load_training_checkpoint(path)
        bad = non_finite_entries(state)
        if bad:
            raise TrainingDiverged(
                f"The checkpoint {path} holds non-finite values ({', '.join(bad[:6])}); it cannot be resumed."
            )
        restore_training_state(self, state)
        self.last_good_checkpoint = (Path(path), self.step)
        self.logger.event(self.step, "resume", path=str(path))
        self.run_log.info(f"Resumed from {path} at step {self.step}.")

    # -- the step ------------------------------------------------------------------------------------------
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
        """Give the DataLoader a generator seeded by (seed, rank, epoch) before each epoch's iterator is made
        (see :mod:`.seeding`)."""
        inner = getattr(self.loader, "loader", self.loader)
        if isinstance(inner, torch.utils.data.DataLoader):
            epoch = int(getattr(getattr(self.loader, "sampler", None), "epoch", 0))
            inner.generator = loader_generator(self.config.seed, self.dist.rank, epoch)

    def _check_batch_on_host(self, batch: dict[str, Any]) -> bool:
        """The objective's value checks of a batch (pixel ranges, label range), done here while the batch is
        still on the CPU, where reading it costs no device sync. Returns False (the objective then checks it
        itself) for a batch that is already elsewhere or does not look like the objective's. Inside
        ``values_checked_by_caller()`` the objective and the backbone then skip their reads of these values, and
        the objective its read of the loss terms (the step checks them fused, :meth:`Objective.all_finite`)."""
        from ..encoders.base import check_pixel_ranges

        image, raw, cond = batch.get("image"), batch.get("raw"), batch.get("cond")
        labels = isinstance(cond, torch.Tensor) and not cond.is_floating_point()  # text embeddings need no check
        on_host = [v for v in (image, raw, cond if labels else None) if isinstance(v, torch.Tensor)]
        if not isinstance(image, torch.Tensor) or any(v.device.type != "cpu" for v in on_host):
            return False
        checks = [(image, "The training image", (-1.0, 1.0))]
        if isinstance(raw, torch.Tensor):
            checks.append((raw, "The raw training image", (0.0, 1.0)))
        check_pixel_ranges(checks, natural_images=("The training image",))
        num_classes = getattr(self.model, "num_classes", None)
        if labels and num_classes is not None:
            check_labels(cond, num_classes, "batch['cond']", batch=image.shape[0])
        return True

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: _moved(v, self.device) for k, v in batch.items()}

    def _attach_seeds(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Per-sample seeds from the global sample index (see :mod:`.seeding`)."""
        local = _batch_size(batch)
        sizes = all_gather_ints(local, self.device)
        offset = self.samples_seen + sum(sizes[: self.dist.rank])
        self.samples_seen += sum(sizes)
        return {**batch, "seeds": sample_seeds(self.config.seed, offset, local)}

    def _forward(self, batch: dict[str, Any], sync: bool) -> dict[str, torch.Tensor]:
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)
        no_sync = (
            contextlib.nullcontext()
            if sync or not hasattr(self.train_step_module, "no_sync")
            else self.train_step_module.no_sync()
        )
        if hasattr(self.train_step_module, "set_requires_gradient_sync"):  # FSDP2: reduce on the last micro-batch only
            self.train_step_module.set_requires_gradient_sync(sync)
        with no_sync, autocast:
            return self.train_step_module(batch, self.step)

    def optimizer_step(self, batches: Iterator[dict[str, Any]]) -> StepRecord:
        """One optimiser step over ``grad_accum`` micro-batches from ``batches`` (see :meth:`batches`).

        Returns a :class:`StepRecord` (unpacks as ``applied, values, problem``, which reads it). A step whose
        loss terms or gradient norm are not finite on any rank is not applied: no optimiser, schedule or EMA
        update. Does not advance ``step`` (:meth:`fit` does, with logging and checkpoints); benchmarks call it.
        """
        c = self.config
        accum = c.optim.grad_accum
        self.optimizer.zero_grad(set_to_none=True)
        names: list[str] | None = None
        totals: torch.Tensor | None = None
        finite: torch.Tensor | None = None
        problems = []
        for micro in range(accum):
            batch = self.batch_transform(next(batches))
            checked = self._check_batch_on_host(batch)
            batch = self._to_device(batch)
            if c.per_sample_noise:
                batch = self._attach_seeds(batch)
            with values_checked_by_caller() if checked else contextlib.nullcontext():
                out = self._forward(batch, sync=micro == accum - 1)
            self.beacon.tick()
            if self.modules.last_problem:
                problems.append(self.modules.last_problem)
            if names is None:
                names = list(out)
            nan = out["loss"].new_full((), float("nan"))
            vec = torch.stack([(out[k] if k in out else nan).detach().reshape(()).double() for k in names]) / accum
            totals = vec if totals is None else totals + vec
            ok_here = Objective.all_finite(out)  # fused on the device: no host sync
            finite = ok_here if finite is None else finite & ok_here
            (out["loss"] / accum).backward()
            self.beacon.tick()
        with_grad = [(n, p) for n, p in self._named_params if p.grad is not None]
        grad_names = [n for n, _ in with_grad]
        params = [p for _, p in with_grad]
        norms = _local(torch.stack(torch._foreach_norm([p.grad for p in params]))) if params else None
        grad_norm = torch.linalg.vector_norm(norms) if norms is not None else totals.new_zeros(())
        ok = finite & torch.isfinite(grad_norm)
        if self.dist.distributed:
            ok = all_reduce_min_(ok.to(torch.float32)) > 0
        if c.optim.grad_clip is not None and params:
            torch.nn.utils.clip_grads_with_norm_(params, c.optim.grad_clip, grad_norm)
        record = StepRecord(
            ok=ok,
            values=torch.cat([totals, grad_norm.reshape(1).to(totals)]),
            names=[*names, "grad_norm"],
            lr=self.optimizer.param_groups[0]["lr"],  # the rate this step uses
            grad_norms=norms,
            param_names=grad_names,
            problem="; ".join(dict.fromkeys(problems)) or None,
        )
        if self.skips_on_device:
            self.optimizer.found_inf = (~ok).to(torch.float32)
            try:
                self.optimizer.step()
            finally:
                self.optimizer.found_inf = None
            self.scheduler.step()
            record.scheduled = True
            self.ema.update(where=ok)
        elif record.applied:  # reads the flag: the plain optimisers cannot skip on the device
            self.optimizer.step()
            self.scheduler.step()
            record.scheduled = True
            self.ema.update()
        self.beacon.tick()
        return record

    # -- the loop ------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train until ``max_steps`` (resumed runs continue from their step).

        Ctrl-C or SIGTERM (a scheduler's preemption) ends the run after the current step, all ranks together,
        with a checkpoint, the sample grid and the export, as at a normal end (``stopped="interrupted"``). A rank
        that stops answering ends every rank with one sentence naming it (:class:`RankStoppedAnswering`).
        """
        self.beacon.start()
        try:
            with _stop_on_sigterm() as stop_requested:
                return self._fit(stop_requested)
        except RankStoppedAnswering:
            raise
        except Exception as exc:
            if looks_like_collective_failure(exc):
                explained = explain_collective_failure(exc, self.beacon)
                if self.run_log.enabled:
                    self.run_log.warning(str(explained))
                else:
                    log.error("%s", explained)
                raise explained from exc
            raise
        finally:
            self.beacon.stop()
            self._finish_logs()

    def _due(self, step: int) -> bool:
        c = self.config
        return (
            step % c.log_every == 0
            or step >= c.max_steps
            or step % c.ckpt_every == 0
            or step % c.keep_every == 0
            or bool(c.sample.num_images and step % c.sample.every == 0)
        )

    def _fit(self, stop_requested: Callable[[], bool]) -> TrainResult:
        c = self.config
        if self.dist.is_main:
            atomic_save_json(c.to_dict(), self.out_dir / "config.json")
        global_batch = c.data.batch_size * c.optim.grad_accum * self.dist.world_size
        self.run_log.info(
            f"Training {c.name}: step {self.step} -> {c.max_steps}, global batch {global_batch}, "
            f"{self.dist.world_size} process(es) on {self.device.type}, run folder {self.out_dir}."
        )
        self.modules.train()
        batches = self.batches()
        bar = _progress(self.step, c.max_steps, enabled=self.show_bar)
        pending: list[StepRecord] = []
        stopped, window_start, window_steps = "max_steps", time.perf_counter(), 0
        checkpoint, saved_at, handled = None, -1, self.step
        try:
            while self.step < c.max_steps:
                # One process reads its own flag; ranks agree only where they read values anyway.
                if (not self.dist.distributed or not pending) and any_true(stop_requested(), self.device):
                    stopped = "interrupted"
                    self.run_log.warning(f"Stop requested (SIGTERM) at step {self.step}; saving a checkpoint.")
                    break
                record = self.optimizer_step(batches)
                pending.append(record)
                self.step += 1
                if self.posthoc is not None and record.applied:  # post-hoc EMA reads the flag every step
                    self._posthoc_update()
                window_steps += 1
                self.beacon.tick(self.step)
                self._emit("after_step", record)
                if bar is not None:
                    bar.update(1)
                if not (self._due(self.step) or record.known_ok is False):
                    continue
                self._settle(pending)
                pending = []
                if bar is not None and bar.n != self.step:
                    bar.n = self.step
                if self.step == handled or not self._due(self.step):
                    continue  # a skipped step moved the counter back: this boundary is not reached yet
                handled = self.step
                if self.step % c.log_every == 0 or self.step >= c.max_steps:
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    rate = global_batch * window_steps / elapsed
                    values = {**self._logged_values(), "images_per_s": rate}
                    self.logger.log(self.step, values)
                    eta = (c.max_steps - self.step) * elapsed / max(window_steps, 1)
                    self.run_log.progress(format_progress(self.step, c.max_steps, values, rate, eta))
                    if bar is not None:
                        bar.set_postfix(
                            loss=f"{values.get('loss', float('nan')):.4f}", img_s=f"{rate:.1f}", refresh=False
                        )
                    window_start, window_steps = time.perf_counter(), 0
                if c.sample.num_images and self.step % c.sample.every == 0:
                    self.sample_grid()
                if self.step % c.ckpt_every == 0 or self.step % c.keep_every == 0:
                    checkpoint, saved_at = self.save_checkpoint(), self.step
        except KeyboardInterrupt:
            stopped = "interrupted"
            self.run_log.warning(f"Interrupted at step {self.step}; saving a checkpoint.")
        finally:
            if bar is not None:
                bar.close()
        if pending:
            self._settle(pending)
        if self.posthoc is not None and self.step > 0 and not self.posthoc.due(self.step):
            self.save_posthoc_snapshot()  # the stopping point can be reconstructed too
        if saved_at != self.step:
            checkpoint = self.save_checkpoint()
        if c.sample.num_images and self.step % c.sample.every != 0:
            self.sample_grid()
        export_dir = self.export() if c.export_ema else None
        last = self._last_good
        result = TrainResult(
            self.step, self.out_dir, checkpoint, export_dir, stopped, last.value_dict().get("loss") if last else None
        )
        self.run_log.info(f"Stopped at step {self.step} ({stopped}); checkpoint {checkpoint}.")
        self._emit("end", result)
        return result

    _last_good: StepRecord | None = None

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

    def _settle(self, pending: list[StepRecord]) -> None:
        """Read the flags of the steps since the last read (one host sync), then count the skipped steps out:
        the step counter and the lr schedule go back, each skip is logged with what was not finite, and a run
        of ``max_bad_steps`` skips stops the run."""
        unread = [r for r in pending if r.known_ok is None]
        if unread:
            for r, ok in zip(unread, torch.stack([r.ok for r in unread]).tolist()):
                r.known_ok = bool(ok)
        step = self.step - len(pending)
        unscheduled, diverged = 0, None
        for r in pending:
            if r.known_ok:
                step += 1
                self.bad_steps = 0
                self._last_good = r
                continue
            self.bad_steps += 1
            unscheduled += r.scheduled
            problem = r.describe()
            self.run_log.warning(f"Step {step + 1} skipped ({self.bad_steps} in a row): {problem}.")
            self.logger.event(step, "skipped_step", reason=problem, in_a_row=self.bad_steps, **r.value_dict())
            if self.bad_steps >= self.config.max_bad_steps and diverged is None:
                diverged = (self.bad_steps, problem)
        self.step = step
        if unscheduled:
            self._rewind_schedule(unscheduled)
        if diverged is not None:
            raise TrainingDiverged(
                f"{diverged[0]} steps in a row were not finite (last: {diverged[1]}); stopped at step {self.step}, "
                f"{self._last_good_text()}."
            )

    def _rewind_schedule(self, steps: int) -> None:
        """Undo ``steps`` lr-schedule steps (LambdaLR: the rate is a closed form of its step count)."""
        s = self.scheduler
        s.last_epoch -= steps
        lrs = [base * fn(s.last_epoch) for fn, base in zip(s.lr_lambdas, s.base_lrs)]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        s._last_lr = lrs

    def _logged_values(self) -> dict[str, float]:
        """The last applied step's values, averaged over ranks (each rank's are means over its part)."""
        r = self._last_good
        if r is None:
            return {}
        values = all_reduce_mean_(r.values.clone()) if self.dist.distributed else r.values
        return {**dict(zip(r.names, values.tolist())), "lr": r.lr}

    def _finish_logs(self) -> None:
        if self.dist.is_main and self.logger is not None:
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

    def _checked_grid_labels(self) -> list[int]:
        labels = self.grid_labels()
        num_classes = int(getattr(self.model, "num_classes", 1000))
        wrong = [v for v in labels if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < num_classes]
        if not labels or wrong:
            raise ValueError(
                f"sample.labels must be class indices in [0, {num_classes}) for this model, got "
                f"{wrong[:4] if wrong else labels}."
            )
        return labels

    @torch.no_grad()
    def sample_grid(self) -> Path | None:
        """A PNG grid from the EMA model with fixed labels and noise (``<out>/samples/step_XXXXXXX.png``)."""
        s = self.config.sample
        everyone = self.config.strategy == "fsdp" and self.dist.distributed  # sharded EMA: every rank must run
        path = None
        if self.dist.is_main or everyone:
            from ..generate import generate
            from ..samplers import build_sampler

            labels = self._checked_grid_labels()
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
        full = full_ema_state(self.ema, self.dist, self.config.strategy)
        if self.dist.is_main:
            if self.config.strategy == "fsdp" and self.dist.distributed:
                from ..backbones import build_model

                plain = build_model(self.model.arch, **self.model.config)
                plain.load_state_dict(full)
                save_pretrained(plain, target, extra=self._export_extra())
            else:
                save_pretrained(self.ema.model, target, extra=self._export_extra())
        barrier()
        return target if self.dist.is_main else None

    def _export_extra(self) -> dict[str, Any] | None:
        """What later tools read from the export besides the weights: the class names (captions, the app)."""
        return {"class_names": list(self.class_names)} if self.class_names else None

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()
        self.run_log.close()
        self.beacon.stop()
        self.lock.release()
        cleanup_distributed(self.dist)
        torch.set_num_threads(self._threads_before)


def train(config: TrainConfig, *, resume: str | None = None, overwrite: bool = False, **parts: Any) -> TrainResult:
    """Build a :class:`Trainer`, run it, and release the process group (the recipes' entry point)."""
    if config.text is not None:  # text-to-image: the trainer with a text encoder
        from .text import T2ITrainer

        trainer: Trainer = T2ITrainer(config, resume=resume, overwrite=overwrite, **parts)
    else:
        trainer = Trainer(config, resume=resume, overwrite=overwrite, **parts)
    try:
        return trainer.fit()
    finally:
        trainer.close()


# -- helpers -----------------------------------------------------------------------------------------------
# Errors rank 0 meets in the run folder, re-raised by name on the other ranks (the same sentence everywhere).
_ERRORS: dict[str, type[Exception]] = {
    "TrainingDiverged": TrainingDiverged,
    "RunFolderError": RunFolderError,
    "WriteError": WriteError,
    "DiskFullError": DiskFullError,
    "FolderNotWritableError": FolderNotWritableError,
}


def _local(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a DTensor (FSDP2 gradients), unchanged otherwise."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _build_model(config: TrainConfig) -> nn.Module:
    from ..backbones import build_model

    return build_model(config.model.name, **config.model.overrides)


def _build_objective(config: TrainConfig, model: nn.Module) -> nn.Module:
    from ..losses import build_objective

    overrides = dict(config.objective.overrides)
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


def _moved(value: Any, device: torch.device) -> Any:
    """A tensor, or each tensor of a mapping (a structured condition such as ``{"emb", "mask"}``), on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {k: _moved(v, device) for k, v in value.items()}
    return value


def _batch_size(batch: dict[str, Any]) -> int:
    for key in ("image", "raw"):
        if isinstance(batch.get(key), torch.Tensor):
            return int(batch[key].shape[0])
    raise KeyError("A training batch needs an 'image' tensor (B, 3, S, S).")


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
