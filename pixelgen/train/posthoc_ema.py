"""Post-hoc EMA: power-function averages tracked during training, any other width reconstructed afterwards.

The power-function EMA (Karras et al., "Analyzing and Improving the Training Dynamics of Diffusion Models",
2024) averages the weights of the whole run so far with a profile that grows like a power of time::

    θ̂_γ(t) = Σ_{τ=1..t} w_τ θ_τ,   w_τ = (τ^(γ+1) − (τ−1)^(γ+1)) / t^(γ+1)

which one update per optimiser step produces exactly: ``θ̂ ← β_t θ̂ + (1 − β_t) θ_t`` with
``β_t = (1 − 1/t)^(γ+1)`` (``β_1 = 0``: the first step copies the weights). The weight ``w_τ`` is the integral
over ``(τ−1, τ]`` of the continuous profile ``p(τ) = (γ+1) τ^γ / t^(γ+1)``, so the discrete average is that
profile applied to the step-wise constant weight trajectory; everything below works with the continuous profile.

Width: the standard deviation of ``p`` relative to ``t``, ``σ_rel = sqrt((γ+1) / ((γ+2)² (γ+3)))``. Unlike a
fixed decay, a power profile keeps its relative width as the run grows (0.05 ↔ γ ≈ 16.97, 0.10 ↔ γ ≈ 6.94;
``σ_rel = 1/sqrt(12)`` is γ = 0, the uniform average of every step).

Reconstruction: snapshots ``θ̂_{γ_i}(t_i)`` of two tracked widths taken every K steps are linear in the weight
trajectory, so a combination ``Σ x_i θ̂_i`` has the profile ``Σ x_i p_i``. The ``x`` minimising the L² distance
between that profile and a target ``p_{γ*, t*}``, under ``Σ x_i = 1`` (profiles integrate to 1, so a weight that
never moved is kept exactly), solve ``A x + λ 1 = b, 1ᵀx = 1`` with the closed-form inner products

    ⟨p_i, p_j⟩ = (γ_i+1)(γ_j+1) / (γ_i+γ_j+1) · min(t_i, t_j)^(γ_i+γ_j+1) / (t_i^(γ_i+1) t_j^(γ_j+1))

(computed in log space: the powers overflow float64 for long runs). The relative L² error of the fitted profile
is reported with every reconstruction.

On disk (``<run>/posthoc_ema/``), one safetensors file per (step, width, rank)::

    step_0010000-sigma0.05-rank00000-of-00001.safetensors

Under FSDP every rank writes its own shards (dim-0 pieces, concatenated in rank order when read back); under
DDP or a single process rank 0 writes the whole state. Each file is written atomically; a step counts only once
the files of every rank and width exist. The running averages themselves (fp32) live in the training
checkpoint, so a resumed run continues them exactly and rewrites any snapshot written after that checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..utils.io import CheckpointError, load_safetensors, save_safetensors

__all__ = [
    "SNAPSHOT_DIR",
    "SNAPSHOT_FORMAT",
    "MAX_SIGMA_REL",
    "SNAPSHOT_DTYPES",
    "sigma_rel_to_gamma",
    "gamma_to_sigma_rel",
    "power_ema_beta",
    "power_profile_weights",
    "profile_inner_products",
    "solve_profile",
    "PostHocEMA",
    "Snapshot",
    "list_snapshots",
    "backbone_of",
    "Reconstruction",
    "reconstruct",
    "export_reconstruction",
]

log = logging.getLogger(__name__)

SNAPSHOT_DIR = "posthoc_ema"
SNAPSHOT_FORMAT = "pixelgen-posthoc-ema-v1"
MAX_SIGMA_REL = 1.0 / math.sqrt(12.0)  # γ = 0: the uniform average of the whole run
SNAPSHOT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_NAME = re.compile(r"^step_(\d+)-sigma([0-9.e+-]+)-rank(\d+)-of-(\d+)\.safetensors$")


# ------------------------------------------------------------------------------------------------ the maths


def _check_sigma_rel(sigma_rel: float) -> float:
    if isinstance(sigma_rel, bool) or not isinstance(sigma_rel, (int, float)) or not math.isfinite(sigma_rel):
        raise ValueError(f"sigma_rel must be a finite number, got {sigma_rel!r}.")
    if not 0.0 < sigma_rel <= MAX_SIGMA_REL + 1e-12:
        raise ValueError(
            f"sigma_rel must lie in (0, {MAX_SIGMA_REL:.4f}] (1/sqrt(12) is the uniform average of the run), got {sigma_rel}."
        )
    return float(sigma_rel)


def gamma_to_sigma_rel(gamma: float) -> float:
    """Relative standard deviation of the power profile ``τ^γ`` on ``[0, t]`` (γ > -1)."""
    if not math.isfinite(gamma) or gamma <= -1.0:
        raise ValueError(f"gamma must be a finite number above -1, got {gamma}.")
    return math.sqrt((gamma + 1.0) / ((gamma + 2.0) ** 2 * (gamma + 3.0)))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent γ ≥ 0 whose profile has relative width ``sigma_rel`` (0 < σ_rel ≤ 1/sqrt(12)).

    ``σ² (γ+2)² (γ+3) = γ+1`` is a cubic in γ; for these widths its largest real root is the one with γ ≥ 0.
    """
    s = _check_sigma_rel(sigma_rel)
    inv = 1.0 / (s * s)
    roots = np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv])
    real = roots[np.abs(roots.imag) < 1e-9 * max(1.0, float(np.abs(roots).max()))].real
    gamma = float(real.max())
    # one Newton step on the exact relation polishes the root to full precision
    f = s * s * (gamma + 2.0) ** 2 * (gamma + 3.0) - (gamma + 1.0)
    df = s * s * (2.0 * (gamma + 2.0) * (gamma + 3.0) + (gamma + 2.0) ** 2) - 1.0
    if df != 0.0:
        gamma -= f / df
    return max(gamma, 0.0)


def power_ema_beta(step: int, gamma: float) -> float:
    """The decay of update number ``step`` (1-based): ``(1 − 1/step)^(γ+1)``; 0 at step 1."""
    if step < 1:
        raise ValueError(f"step must be at least 1, got {step}.")
    return (1.0 - 1.0 / step) ** (gamma + 1.0)


def power_profile_weights(gamma: float, t: int) -> np.ndarray:
    """The weights ``w_1 .. w_t`` (float64, summing to 1) of the power EMA after ``t`` updates."""
    if t < 1:
        raise ValueError(f"t must be at least 1, got {t}.")
    tau = np.arange(t + 1, dtype=np.float64) / t
    cum = tau ** (gamma + 1.0)
    return np.diff(cum)


def profile_inner_products(
    gammas_a: Sequence[float], times_a: Sequence[float], gammas_b: Sequence[float], times_b: Sequence[float]
) -> np.ndarray:
    """Matrix of the L² inner products ``⟨p_{γa_i, ta_i}, p_{γb_j, tb_j}⟩`` of normalised power profiles."""
    ga, ta = np.asarray(gammas_a, np.float64)[:, None], np.asarray(times_a, np.float64)[:, None]
    gb, tb = np.asarray(gammas_b, np.float64)[None, :], np.asarray(times_b, np.float64)[None, :]
    if (ta <= 0).any() or (tb <= 0).any():
        raise ValueError("Profile times must be positive.")
    s = ga + gb + 1.0
    if (s <= 0).any():
        raise ValueError("Profiles need γ_i + γ_j > -1 to have a finite inner product.")
    m = np.minimum(ta, tb)
    log_ip = np.log(ga + 1.0) + np.log(gb + 1.0) - np.log(s) + s * np.log(m) - (ga + 1.0) * np.log(ta)
    log_ip = log_ip - (gb + 1.0) * np.log(tb)
    return np.exp(log_ip)


def solve_profile(
    gammas: Sequence[float], times: Sequence[float], target_gamma: float, target_time: float
) -> tuple[np.ndarray, float]:
    """Coefficients ``x`` (summing to 1) of the snapshots (γ_i, t_i) whose combined profile is closest (L²) to
    the target, and the relative L² error ``‖Σ x_i p_i − p*‖ / ‖p*‖`` of that fit."""
    if len(gammas) != len(times) or not len(gammas):
        raise ValueError(f"Need one time per snapshot and at least one snapshot, got {len(gammas)} and {len(times)}.")
    a = profile_inner_products(gammas, times, gammas, times)
    b = profile_inner_products(gammas, times, [target_gamma], [target_time])[:, 0]
    c = float(profile_inner_products([target_gamma], [target_time], [target_gamma], [target_time])[0, 0])
    # Profiles integrate to 1, and so must the combination: with sum(x) = 1 a constant trajectory is averaged
    # exactly, so the error is proportional to how much the weights moved, not to their size.
    n = len(b)
    kkt = np.zeros((n + 1, n + 1))
    kkt[:n, :n], kkt[:n, n], kkt[n, :n] = a, 1.0, 1.0
    x = np.linalg.lstsq(kkt, np.append(b, 1.0), rcond=None)[0][:n]
    err2 = float(x @ a @ x - 2.0 * x @ b + c)
    return x, math.sqrt(max(err2, 0.0) / c)


# ------------------------------------------------------------------------------------------- during training


def _sigma_tag(sigma_rel: float) -> str:
    return f"{sigma_rel:.6g}"


def _is_dtensor(t: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return isinstance(t, DTensor)


def _local_piece(t: torch.Tensor) -> tuple[torch.Tensor, list[int] | None]:
    """(this rank's part, global shape when the tensor is dim-0 sharded, else None)."""
    if not _is_dtensor(t):
        return t, None
    from torch.distributed.tensor import Replicate, Shard

    placements = tuple(t.placements)
    if all(isinstance(p, Replicate) for p in placements):
        return t.to_local(), None
    if len(placements) == 1 and isinstance(placements[0], Shard) and placements[0].dim == 0:
        return t.to_local(), list(t.shape)
    raise ValueError(f"Post-hoc EMA snapshots support dim-0 sharding (FSDP2) only, got placements {placements}.")


class PostHocEMA:
    """Power-function EMAs of ``model``'s trainable parameters for each relative width in ``sigma_rels``.

    Call :meth:`update` once per optimiser step with the 1-based step number, and :meth:`save_snapshot`
    every ``every`` steps. The averages are fp32 tensors paired with the live parameters (under FSDP2 they are
    sharded like them, so each rank averages its own shards). ``dtype`` is the snapshot storage type
    (``"fp32"``, ``"fp16"`` or ``"bf16"``); the averages stay fp32.
    """

    def __init__(self, model: nn.Module, sigma_rels: Iterable[float], *, every: int = 10_000, dtype: str = "fp32"):
        sigmas = [_check_sigma_rel(s) for s in sigma_rels]
        if not sigmas:
            raise ValueError("PostHocEMA needs at least one relative width (sigma_rels).")
        tags = [_sigma_tag(s) for s in sigmas]
        if len(set(tags)) != len(tags):
            raise ValueError(f"The relative widths must be distinct, got {sigmas}.")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}.")
        if dtype not in SNAPSHOT_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(SNAPSHOT_DTYPES)}, got {dtype!r}.")
        self.sigma_rels = sigmas
        self.gammas = [sigma_rel_to_gamma(s) for s in sigmas]
        self.every = every
        self.dtype = dtype
        self.step = 0
        self.model = model
        self.track(model)

    def track(self, model: nn.Module) -> None:
        """(Re)pair with ``model``'s parameters, restarting the averages from its current weights; call after
        anything that replaces the parameter objects (FSDP2's ``fully_shard``), before the first update."""
        self.model = model
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self._live = [p for _, p in model.named_parameters() if p.requires_grad]
        with torch.no_grad():
            self.averages = [[p.detach().to(torch.float32, copy=True) for p in self._live] for _ in self.sigma_rels]

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold in the weights after optimiser step ``step`` (1-based, consecutive from the last update)."""
        if step != self.step + 1:
            raise ValueError(f"Post-hoc EMA updates must be consecutive: got step {step} after step {self.step}.")
        self.step = step
        if not self._live:
            return
        for gamma, avg in zip(self.gammas, self.averages):
            beta = power_ema_beta(step, gamma)
            torch._foreach_mul_(avg, beta)
            torch._foreach_add_(avg, self._live, alpha=1.0 - beta)

    def due(self, step: int) -> bool:
        return step > 0 and step % self.every == 0

    # -- training-checkpoint state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Full fp32 averages on CPU (gathered under FSDP2: call on every rank), for the training checkpoint."""
        averages = {}
        for sigma, avg in zip(self.sigma_rels, self.averages):
            full = {}
            for name, t in zip(self.names, avg):
                full[name] = (t.full_tensor() if _is_dtensor(t) else t).detach().cpu().clone()
            averages[_sigma_tag(sigma)] = full
        return {"sigma_rels": list(self.sigma_rels), "step": self.step, "averages": averages}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        stored = [float(s) for s in state.get("sigma_rels", [])]
        if [_sigma_tag(s) for s in stored] != [_sigma_tag(s) for s in self.sigma_rels]:
            raise ValueError(
                f"The checkpoint tracked post-hoc EMA widths {stored} but the config asks for {self.sigma_rels}; "
                "keep the widths of a run fixed (start a new stage with init_from to change them)."
            )
        for sigma, avg in zip(self.sigma_rels, self.averages):
            saved = state["averages"][_sigma_tag(sigma)]
            missing = [n for n in self.names if n not in saved]
            if missing:
                raise ValueError(f"The checkpoint's post-hoc EMA state has no entry for {missing[:3]}.")
            for name, target in zip(self.names, avg):
                _copy_full_into(target, saved[name], name)
        self.step = int(state["step"])

    # -- snapshots -------------------------------------------------------------------------------------------
    def snapshot_bytes(self) -> int:
        """Bytes of one snapshot step on this rank (every width, in the storage dtype, tensors only)."""
        size = SNAPSHOT_DTYPES[self.dtype].itemsize
        per_width = sum(_local_piece(t)[0].numel() * size for t in self.averages[0])
        return per_width * len(self.sigma_rels)

    @torch.no_grad()
    def save_snapshot(self, run_dir: str | os.PathLike, step: int, *, rank: int = 0, world_size: int = 1) -> list[Path]:
        """Write this rank's files of the snapshot at ``step`` (atomically); returns the paths written.

        Call on every rank when the parameters are sharded (each writes its shards); otherwise on rank 0 only.
        The frozen parameters and persistent buffers are stored too, so a snapshot is a complete state.
        """
        if step != self.step:
            raise ValueError(f"The averages are at step {self.step}; a snapshot for step {step} would mislabel them.")
        sharded_run = any(_local_piece(t)[1] is not None for t in self._live)
        if not sharded_run:
            rank, world_size = 0, 1
        storage = SNAPSHOT_DTYPES[self.dtype]
        static = {k: v for k, v in self.model.state_dict().items() if k not in set(self.names)}
        arch, config = getattr(self.model, "arch", None), getattr(self.model, "config", None)
        written = []
        for sigma, gamma, avg in zip(self.sigma_rels, self.gammas, self.averages):
            tensors, sharded = {}, {}
            for name, t in [*zip(self.names, avg), *static.items()]:
                local, global_shape = _local_piece(t)
                if global_shape is None and rank != 0:
                    continue  # replicated entries are written once, by rank 0
                if global_shape is not None:
                    sharded[name] = global_shape
                local = local.detach()
                tensors[name] = local.to(storage) if local.is_floating_point() else local
            meta = {
                "format": SNAPSHOT_FORMAT,
                "step": str(step),
                "sigma_rel": repr(float(sigma)),
                "gamma": repr(float(gamma)),
                "rank": str(rank),
                "world_size": str(world_size),
                "dtype": self.dtype,
                "sharded": json.dumps(sharded),
                "averaged": json.dumps(self.names),
                "arch": json.dumps(arch),
                "config": json.dumps(config, default=str),
            }
            path = snapshot_path(run_dir, step, sigma, rank, world_size)
            save_safetensors(tensors, path, metadata=meta)
            written.append(path)
        return written


def _copy_full_into(target: torch.Tensor, full: torch.Tensor, name: str) -> None:
    """Copy a full tensor into ``target``, which may be this rank's dim-0 shard (FSDP2)."""
    local, global_shape = _local_piece(target)
    if global_shape is None:
        if tuple(full.shape) != tuple(local.shape):
            raise ValueError(f"Post-hoc EMA entry {name} has shape {tuple(full.shape)}, expected {tuple(local.shape)}.")
        local.copy_(full)
        return
    mesh = target.device_mesh
    world, rank = mesh.size(), mesh.get_local_rank()
    pieces = list(torch.chunk(full, world, dim=0))
    piece = pieces[rank] if rank < len(pieces) else full[:0]
    if tuple(piece.shape) != tuple(local.shape):
        raise ValueError(f"Post-hoc EMA entry {name}: shard shape {tuple(piece.shape)} != {tuple(local.shape)}.")
    local.copy_(piece)


def snapshot_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / SNAPSHOT_DIR


def remove_stale_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Delete temporary files of snapshots whose writer was killed (they never replaced a finished file)."""
    folder = snapshot_dir(run_dir)
    stale = [p for p in folder.glob(".*.tmp") if p.is_file()] if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def snapshot_path(run_dir: str | os.PathLike, step: int, sigma_rel: float, rank: int, world_size: int) -> Path:
    return snapshot_dir(run_dir) / (
        f"step_{step:07d}-sigma{_sigma_tag(sigma_rel)}-rank{rank:05d}-of-{world_size:05d}.safetensors"
    )


# ----------------------------------------------------------------------------------------------- afterwards


@dataclass
class Snapshot:
    """The files of one tracked width at one step (one per rank)."""

    step: int
    sigma_rel: float
    gamma: float
    world_size: int
    files: dict[int, Path] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return set(self.files) == set(range(self.world_size))


def list_snapshots(run_dir: str | os.PathLike) -> list[Snapshot]:
    """Every complete snapshot in ``<run>/posthoc_ema`` (incomplete ones are logged and left out), by step."""
    folder = snapshot_dir(run_dir)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{run_dir} has no {SNAPSHOT_DIR}/ folder; train with post-hoc EMA on (posthoc_ema.sigma_rels=[0.05,0.1])."
        )
    found: dict[tuple[int, str, int], Snapshot] = {}
    for path in folder.iterdir():
        m = _NAME.match(path.name)
        if not m:
            continue
        step, tag, rank, world = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        sigma = float(tag)
        snap = found.setdefault((step, tag, world), Snapshot(step, sigma, sigma_rel_to_gamma(sigma), world))
        snap.files[rank] = path
    complete = []
    for snap in found.values():
        if snap.complete:
            complete.append(snap)
        else:
            log.warning(
                "snapshot at step %d (sigma_rel %s) has %d of %d rank files; left out",
                snap.step,
                snap.sigma_rel,
                len(snap.files),
                snap.world_size,
            )
    return sorted(complete, key=lambda s: (s.step, s.sigma_rel))


def _read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file (corrupt or truncated?): {exc}") from exc
    if meta.get("format") != SNAPSHOT_FORMAT:
        raise CheckpointError(f"{path} is not a pixelgen post-hoc EMA snapshot (no format tag {SNAPSHOT_FORMAT!r}).")
    return meta


def load_snapshot(snap: Snapshot, dtype: torch.dtype = torch.float64) -> tuple[dict[str, torch.Tensor], dict]:
    """The full state of one snapshot (shards concatenated), floating tensors as ``dtype``; and its metadata."""
    pieces: dict[str, list[torch.Tensor]] = {}
    first_meta: dict[str, str] | None = None
    sharded: dict[str, list[int]] = {}
    for rank in range(snap.world_size):
        path = snap.files[rank]
        meta = _read_metadata(path)
        if int(meta["step"]) != snap.step or int(meta["world_size"]) != snap.world_size or int(meta["rank"]) != rank:
            raise CheckpointError(f"{path}: its metadata do not match its name (step, rank or world size).")
        if first_meta is None:
            first_meta, sharded = meta, json.loads(meta["sharded"])
        for name, t in load_safetensors(path).items():
            pieces.setdefault(name, []).append(t.to(dtype) if t.is_floating_point() else t)
    state = {}
    for name, parts in pieces.items():
        if name in sharded:
            full = torch.cat(parts, dim=0)
            if list(full.shape) != list(sharded[name]):
                raise CheckpointError(
                    f"Snapshot step {snap.step}: the shards of {name} give shape {tuple(full.shape)}, expected {tuple(sharded[name])}."
                )
            state[name] = full
        else:
            state[name] = parts[0]
    assert first_meta is not None
    info = {
        "arch": json.loads(first_meta["arch"]),
        "config": json.loads(first_meta["config"]),
        "dtype": first_meta["dtype"],
        "averaged": json.loads(first_meta["averaged"]),
    }
    return state, info


def backbone_of(run_dir: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """``(arch, config)`` of the backbone whose snapshots ``run_dir`` holds (as ``build_model`` takes them)."""
    snaps = list_snapshots(run_dir)
    if not snaps:
        raise FileNotFoundError(f"{snapshot_dir(run_dir)} holds no complete post-hoc EMA snapshot yet.")
    meta = _read_metadata(snaps[-1].files[0])
    arch, config = json.loads(meta["arch"]), json.loads(meta["config"])
    if not isinstance(arch, str) or not isinstance(config, dict):
        raise ValueError(f"The snapshots of {run_dir} do not name the backbone (arch/config).")
    return arch, config


@dataclass
class Reconstruction:
    """A reconstructed average: the full state dict (float32), the backbone's ``arch``/``config`` and a record
    of how it was made (target, snapshots used, coefficients, profile error)."""

    state_dict: dict[str, torch.Tensor]
    arch: str | None
    config: dict[str, Any] | None
    info: dict[str, Any]


def reconstruct(run_dir: str | os.PathLike, sigma_rel: float, *, step: int | None = None) -> Reconstruction:
    """The power-EMA average of relative width ``sigma_rel`` at ``step`` (default: the last complete snapshot),
    from the snapshots of ``run_dir`` taken at or before that step.

    The combination is accumulated in float64 one snapshot at a time (memory: two float64 copies of the model).
    """
    target_sigma = _check_sigma_rel(sigma_rel)
    target_gamma = sigma_rel_to_gamma(target_sigma)
    snaps = list_snapshots(run_dir)
    if not snaps:
        raise FileNotFoundError(f"{snapshot_dir(run_dir)} holds no complete post-hoc EMA snapshot yet.")
    steps = sorted({s.step for s in snaps})
    if step is None:
        step = steps[-1]
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"step must be a positive integer, got {step!r}.")
    if step > steps[-1]:
        raise ValueError(
            f"The last complete snapshot of {run_dir} is at step {steps[-1]}; cannot reconstruct step {step}."
        )
    used = [s for s in snaps if s.step <= step]
    exact = [s for s in used if s.step == step and _sigma_tag(s.sigma_rel) == _sigma_tag(target_sigma)]
    if exact:
        used, coefficients, error = exact, np.ones(1), 0.0
    else:
        coefficients, error = solve_profile([s.gamma for s in used], [s.step for s in used], target_gamma, step)
    total: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    for i, (snap, x) in enumerate(zip(used, coefficients)):
        state, meta = load_snapshot(snap)
        averaged = set(meta["averaged"])
        if i == 0:
            names = set(state)
            # frozen parameters and buffers are copies of the live ones, identical in every snapshot
            total = {k: torch.zeros_like(v) if k in averaged else v for k, v in state.items()}
        if set(state) != names:
            raise CheckpointError(f"Snapshot step {snap.step} (sigma_rel {snap.sigma_rel}) holds different tensors.")
        for k in averaged:
            total[k].add_(state[k], alpha=float(x))
    out = {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in total.items()}
    for k, v in out.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ValueError(f"The reconstruction of {k} is not finite; a snapshot is corrupt.")
    info = {
        "sigma_rel": target_sigma,
        "gamma": target_gamma,
        "step": step,
        "profile_error": error,
        "snapshot_dtype": meta.get("dtype"),
        "snapshots": [
            {"step": s.step, "sigma_rel": s.sigma_rel, "coefficient": float(x)} for s, x in zip(used, coefficients)
        ],
    }
    return Reconstruction(out, meta.get("arch"), meta.get("config"), info)


def export_reconstruction(
    run_dir: str | os.PathLike, sigma_rel: float, out_dir: str | os.PathLike, *, step: int | None = None
) -> Path:
    """Reconstruct and write ``model.safetensors`` + ``config.json`` to ``out_dir`` (loadable by
    ``pixelgen.load_pretrained``); config.json records the reconstruction under ``"posthoc_ema"``."""
    from ..backbones import build_model
    from ..checkpoint import save_pretrained

    rec = reconstruct(run_dir, sigma_rel, step=step)
    if not isinstance(rec.arch, str) or not isinstance(rec.config, dict):
        raise ValueError(f"The snapshots of {run_dir} do not name the backbone (arch/config); they cannot be exported.")
    model = build_model(rec.arch, device="meta", **rec.config)
    try:
        model.load_state_dict(rec.state_dict, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"The snapshots of {run_dir} do not fit the backbone they name: {exc}") from exc
    out = save_pretrained(model, out_dir, extra={"posthoc_ema": {"run": str(run_dir), **rec.info}})
    log.info(
        "reconstructed sigma_rel %.4g at step %d from %d snapshots (profile error %.2e) into %s",
        rec.info["sigma_rel"],
        rec.info["step"],
        len(rec.info["snapshots"]),
        rec.info["profile_error"],
        out,
    )
    return out
