"""What a training checkpoint holds, and putting it back: state (de)serialisation for the trainer.

* :func:`training_state` gathers the full state (model, objective, EMA, optimiser, schedule, data position,
  every rank's RNG streams, counters, the config) — call on every rank.
* :func:`restore_training_state` loads a checkpoint into a trainer (``--resume``), bit-exactly when the world
  size is unchanged.
* :func:`init_weights_from` starts a new stage from another run's weights and EMA (fresh optimiser, step 0);
  a frozen sin-cos ``pos_embed`` of another resolution is regenerated rather than loaded.
* :func:`non_finite_entries` names the tensors of a state that are not finite: no such state is ever written.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..distributed import all_gather_objects
from .checkpointing import capture_rng_state, load_training_checkpoint, restore_rng_state
from .parallel import full_state_dicts, load_full_state_dicts
from .seeding import reseed_seed, seed_everything

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["training_state", "restore_training_state", "init_weights_from", "load_weights", "non_finite_entries"]

log = logging.getLogger(__name__)


def training_state(trainer: Trainer) -> dict[str, Any]:
    """The full training state of ``trainer`` (call on every rank: RNG states and FSDP shards are gathered)."""
    t = trainer
    model, objective, ema, optim = full_state_dicts(t.modules, t.ema, t.optimizer, t.dist, t.config.strategy)
    return {
        "step": t.step,
        "samples_seen": t.samples_seen,
        "bad_steps": t.bad_steps,
        "world_size": t.dist.world_size,
        "config": t.config.to_dict(),
        "model": model,
        "objective": objective,
        "ema": ema,
        "optimizer": optim,
        "scheduler": t.scheduler.state_dict(),
        "data": t.loader.state_dict() if hasattr(t.loader, "state_dict") else None,
        "rng": all_gather_objects(capture_rng_state()),
        **({"posthoc_ema": t.posthoc.state_dict()} if t.posthoc is not None else {}),
    }


def restore_training_state(trainer: Trainer, state: dict[str, Any]) -> None:
    t = trainer
    load_full_state_dicts(
        t.modules,
        t.ema,
        t.optimizer,
        t.dist,
        t.config.strategy,
        state["model"],
        state["objective"],
        state["ema"],
        state["optimizer"],
    )
    t.scheduler.load_state_dict(state["scheduler"])
    if t.posthoc is not None:
        if "posthoc_ema" not in state:
            raise ValueError(
                "This checkpoint was written without post-hoc EMA, which can only start at step 0 (start a new "
                "stage with init_from, or turn posthoc_ema.sigma_rels off for this run)."
            )
        t.posthoc.load_state_dict(state["posthoc_ema"])
    t.step, t.samples_seen, t.bad_steps = int(state["step"]), int(state["samples_seen"]), int(state["bad_steps"])
    if state.get("data") is not None and hasattr(t.loader, "load_state_dict"):
        t.loader.load_state_dict(state["data"])
    if int(state["world_size"]) == t.dist.world_size:
        restore_rng_state(state["rng"][t.dist.rank])
    else:
        log.warning(
            "Resuming a %d-process run with %d processes: RNG streams are re-seeded, so the run continues "
            "correctly but not bit-identically.",
            int(state["world_size"]),
            t.dist.world_size,
        )
        seed_everything(reseed_seed(t.config.seed, t.dist.rank, t.step))


def init_weights_from(trainer: Trainer, source: str) -> Path:
    """Stage transition: weights and EMA from ``source`` (a training checkpoint or an export), fresh optimiser."""
    path = Path(source)
    if (path / "model.safetensors").is_file() or path.suffix == ".safetensors":
        from ..utils.io import load_safetensors

        weights = load_safetensors(path / "model.safetensors" if path.is_dir() else path)
        model_sd, ema_sd, objective_sd = weights, weights, None
    else:
        state = load_training_checkpoint(path)
        model_sd, ema_sd, objective_sd = state["model"], state["ema"], state["objective"]
    load_weights(trainer.model, model_sd)
    load_weights(trainer.ema.model, ema_sd)
    if objective_sd is not None:
        trainer.objective.load_state_dict(objective_sd)
    return path


def load_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` strictly, except a frozen sin-cos ``pos_embed`` whose grid differs: the new model keeps its
    own table, regenerated for the new resolution."""
    own = model.state_dict()
    kept = {}
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            if not k.endswith("pos_embed"):
                raise ValueError(
                    f"Cannot initialise from this checkpoint: {k} has shape {tuple(v.shape)} there but "
                    f"{tuple(own[k].shape)} here."
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


def _float_tensors(tree: Any, prefix: str) -> list[tuple[str, torch.Tensor]]:
    if isinstance(tree, torch.Tensor):
        return [(prefix, tree)] if tree.is_floating_point() or tree.is_complex() else []
    if isinstance(tree, dict):
        return [item for k, v in tree.items() for item in _float_tensors(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(tree, (list, tuple)):
        return [item for i, v in enumerate(tree) for item in _float_tensors(v, f"{prefix}[{i}]")]
    return []


def non_finite_entries(state: dict[str, Any], sections=("model", "objective", "ema", "optimizer")) -> list[str]:
    """Names of the floating-point tensors in ``state[section]`` that hold a NaN or an infinity (one host read)."""
    named = [item for s in sections if s in state for item in _float_tensors(state[s], s)]
    if not named:
        return []
    by_device: dict[torch.device, list[int]] = {}
    for i, (_, t) in enumerate(named):
        by_device.setdefault(t.device, []).append(i)
    bad = []
    for idx in by_device.values():  # one read per device
        flags = torch.stack([torch.isfinite(named[i][1]).all() for i in idx]).tolist()
        bad += [named[i][0] for i, ok in zip(idx, flags) if not ok]
    return sorted(bad)
