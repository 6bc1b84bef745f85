"""Data parallelism for the trainer: DDP or FSDP2 wrapping, and full (gathered) state dicts.

The model and the objective are wrapped together (:class:`TrainModules`), so DDP/FSDP also reduce the
gradients of the objective's trainable part (the REPA projector). Under FSDP2 each transformer block is
sharded on its own, and the EMA copy is sharded alike so its update stays local to each rank.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..distributed import DistInfo

__all__ = ["TrainModules", "wrap_for_training", "full_state_dicts", "load_full_state_dicts", "full_ema_state"]


class TrainModules(nn.Module):
    """The backbone and the objective as one module, so one DDP/FSDP wrapper covers all trainable weights.

    An objective that raises :class:`FloatingPointError` (it found a non-finite term itself) yields a NaN
    ``loss`` that still reaches every trainable weight with a zero gradient: the step is then skipped like any
    other non-finite step, and under DDP every rank still takes part in the gradient all-reduce.
    """

    def __init__(self, model: nn.Module, objective: nn.Module):
        super().__init__()
        self.model = model
        self.objective = objective
        self.last_problem: str | None = None

    def forward(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        self.last_problem = None
        try:
            return self.objective(self.model, batch, step=step)
        except FloatingPointError as exc:
            self.last_problem = str(exc)
            zero = sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
            return {"loss": zero + float("nan")}


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks (members of ModuleLists): the units FSDP2 shards one by one."""
    return [block for m in model.modules() if isinstance(m, nn.ModuleList) for block in m]


def _fsdp(info: DistInfo, strategy: str) -> bool:
    return strategy == "fsdp" and info.distributed


def wrap_for_training(modules: TrainModules, ema_model: nn.Module, info: DistInfo, strategy: str) -> nn.Module:
    """The module the training step calls: ``modules`` itself (one process), DDP, or FSDP2-sharded."""
    if not info.distributed:
        return modules
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(info.device.type, (info.world_size,))
        for tree in (modules.model, ema_model):
            for block in repeated_blocks(tree):
                fully_shard(block, mesh=mesh)
            fully_shard(tree, mesh=mesh)
        fully_shard(modules, mesh=mesh)
        return modules
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(modules, device_ids=ids)


def full_state_dicts(
    modules: TrainModules, ema, optimizer: torch.optim.Optimizer, info: DistInfo, strategy: str
) -> tuple[dict, dict, dict, dict]:
    """(model, objective, ema, optimizer) state dicts with full tensors (gathered under FSDP; call on every rank)."""
    if _fsdp(info, strategy):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        both = get_model_state_dict(modules, options=opts)
        model = {k[len("model.") :]: v for k, v in both.items() if k.startswith("model.")}
        objective = {k[len("objective.") :]: v for k, v in both.items() if k.startswith("objective.")}
        ema_sd = get_model_state_dict(ema.model, options=opts)
        optim = get_optimizer_state_dict(modules, optimizer, options=opts)
        return model, objective, ema_sd, optim
    return modules.model.state_dict(), modules.objective.state_dict(), ema.state_dict(), optimizer.state_dict()


def load_full_state_dicts(
    modules: TrainModules,
    ema,
    optimizer: torch.optim.Optimizer,
    info: DistInfo,
    strategy: str,
    model: dict,
    objective: dict,
    ema_sd: dict,
    optim: dict | None,
) -> None:
    if _fsdp(info, strategy):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
        both = {**{f"model.{k}": v for k, v in model.items()}, **{f"objective.{k}": v for k, v in objective.items()}}
        set_model_state_dict(modules, both, options=opts)
        set_model_state_dict(ema.model, ema_sd, options=opts)
        if optim is not None:
            set_optimizer_state_dict(modules, optimizer, optim, options=opts)
        return
    modules.model.load_state_dict(model)
    modules.objective.load_state_dict(objective)
    ema.load_state_dict(ema_sd)
    if optim is not None:
        optimizer.load_state_dict(optim)


def full_ema_state(ema, info: DistInfo, strategy: str) -> dict[str, torch.Tensor] | None:
    """The EMA weights as full tensors on rank 0 (gathered under FSDP; call on every rank); None elsewhere."""
    if _fsdp(info, strategy):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(ema.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return full if info.is_main else None
    return ema.state_dict() if info.is_main else None
