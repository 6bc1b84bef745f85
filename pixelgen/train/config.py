"""Training configuration: plain dataclasses, JSON round trip, and ``section.field=value`` overrides.

A :class:`TrainConfig` holds everything a run needs; recipes build one from a preset and apply command-line
overrides with :func:`apply_overrides` (``"optim.lr=2e-4"``, ``"data.batch_size=16"``,
``"model.overrides.proj_drop=0.0"``). Values are parsed as JSON when they can be (numbers, booleans, ``null``,
lists, objects) and kept as strings otherwise. The resolved configuration is written next to the checkpoints
as ``config.json`` (:meth:`TrainConfig.to_dict`) and read back with :meth:`TrainConfig.from_dict`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ModelConfig",
    "ObjectiveConfig",
    "DataConfig",
    "OptimConfig",
    "SampleConfig",
    "PostHocEMAConfig",
    "TrainConfig",
    "apply_overrides",
    "parse_override_value",
]


@dataclass
class ModelConfig:
    """The backbone: a registry name (``pixelgen.build_model(name, **overrides)``)."""

    name: str = "pixelgen_xl_16"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class ObjectiveConfig:
    """The training objective: ``pixelgen.build_objective(preset=preset, **overrides)``."""

    preset: str = "pixelgen"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """The dataset (a ``registries.dataset`` name) and how it is loaded.

    ``batch_size`` is per process and per micro-batch (the paper: 32 per GPU, 8 GPUs, global 256).
    """

    dataset: str = "imagenet"
    root: str | None = None
    resolution: int = 256
    batch_size: int = 32
    num_workers: int = 4
    flip: bool = False
    shuffle_seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """AdamW with the paper's settings (spec §6.2, §6.5): constant lr, no warm-up, no clipping for C2I."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float | None = None
    grad_accum: int = 1
    fused: bool | None = None  # None: fused on CUDA, the plain implementation elsewhere


@dataclass
class SampleConfig:
    """Periodic sample grids from the EMA model (fixed labels and noise, so grids compare over time).

    ``sampler`` and ``params`` go to ``pixelgen.build_sampler``; ``labels`` None means evenly spread classes.
    """

    sampler: str = "heun"
    params: dict[str, Any] = field(
        default_factory=lambda: {
            "num_steps": 50,
            "timeshift": 2.0,
            "guidance": 2.25,
            "guidance_interval_min": 0.1,
            "guidance_interval_max": 0.9,
            "exact_henu": True,
        }
    )
    every: int = 100_000
    num_images: int = 16
    labels: list[int] | None = None
    seed: int = 0
    batch_size: int = 16


@dataclass
class PostHocEMAConfig:
    """Power-function EMAs kept beside the classic one, for reconstructing any EMA width after training.

    ``sigma_rels``: the relative widths tracked (empty: off, the default); two, e.g. ``[0.05, 0.1]``, are
    enough to reconstruct any width between and around them. ``every``: steps between snapshots;
    ``dtype``: how snapshots are stored (``fp32``, or ``fp16``/``bf16`` at half the size).
    """

    sigma_rels: list[float] = field(default_factory=list)
    every: int = 10_000
    dtype: str = "fp32"


@dataclass
class TrainConfig:
    """A whole training run.

    ``precision``: ``"auto"`` (bf16 autocast on CUDA, none on CPU), ``"bf16"``, ``"fp16"`` or ``"fp32"``; master
    weights are always fp32. ``strategy``: ``"ddp"`` (default) or ``"fsdp"`` (FSDP2 ``fully_shard``).
    ``ckpt_every``: how often ``checkpoints/latest.pt`` is rewritten; ``keep_every``: how often a numbered copy
    is kept (the original kept one every 100k steps). ``init_from``: a checkpoint whose weights and EMA start a new
    run with a fresh optimiser and step 0 (stage transitions, spec §6.6). ``max_bad_steps``: consecutive
    non-finite losses after which the run stops. ``per_sample_noise``: draw each sample's t, noise and CFG drop
    from a generator seeded by (seed, global sample index), so results do not depend on how a global batch is
    split over processes (needs an objective that reads ``batch["seeds"]``; see the trainer).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    posthoc_ema: PostHocEMAConfig = field(default_factory=PostHocEMAConfig)
    name: str = "pixelgen_xl"
    out_dir: str = "runs/pixelgen_xl"
    max_steps: int = 800_000
    seed: int = 1234
    precision: str = "auto"
    matmul_precision: str = "medium"  # torch.set_float32_matmul_precision on CUDA, as the original
    compile: bool = False
    strategy: str = "ddp"
    ema_decay: float = 0.9999
    ckpt_every: int = 5_000
    keep_every: int = 100_000
    log_every: int = 50
    max_bad_steps: int = 5
    init_from: str | None = None
    per_sample_noise: bool = False
    export_ema: bool = True  # write <out_dir>/export (save_pretrained of the EMA model) at the end
    device: str | None = None  # None: cuda:<local_rank> when CUDA is available, else cpu
    num_threads: int | None = None  # torch.set_num_threads for this process; None keeps torch's default

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Fail with one sentence on a value that cannot work."""
        checks = [
            (self.max_steps >= 0, f"max_steps must be >= 0, got {self.max_steps}."),
            (self.data.batch_size >= 1, f"data.batch_size must be >= 1, got {self.data.batch_size}."),
            (self.optim.grad_accum >= 1, f"optim.grad_accum must be >= 1, got {self.optim.grad_accum}."),
            (self.optim.lr > 0, f"optim.lr must be positive, got {self.optim.lr}."),
            (self.optim.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.optim.warmup_steps}."),
            (
                self.optim.grad_clip is None or self.optim.grad_clip > 0,
                f"optim.grad_clip must be positive or null (no clipping), got {self.optim.grad_clip}.",
            ),
            (0.0 <= self.ema_decay <= 1.0, f"ema_decay must lie in [0, 1], got {self.ema_decay}."),
            (
                self.precision in {"auto", "bf16", "fp16", "fp32"},
                f"precision must be auto, bf16, fp16 or fp32, got {self.precision!r}.",
            ),
            (self.strategy in {"ddp", "fsdp"}, f"strategy must be 'ddp' or 'fsdp', got {self.strategy!r}."),
            (self.ckpt_every >= 1, f"ckpt_every must be >= 1, got {self.ckpt_every}."),
            (self.keep_every >= 1, f"keep_every must be >= 1, got {self.keep_every}."),
            (self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}."),
            (self.max_bad_steps >= 1, f"max_bad_steps must be >= 1, got {self.max_bad_steps}."),
            (
                self.num_threads is None or self.num_threads >= 1,
                f"num_threads must be >= 1 or null, got {self.num_threads}.",
            ),
            (self.sample.every >= 1, f"sample.every must be >= 1, got {self.sample.every}."),
            (self.sample.num_images >= 0, f"sample.num_images must be >= 0, got {self.sample.num_images}."),
            (self.posthoc_ema.every >= 1, f"posthoc_ema.every must be >= 1, got {self.posthoc_ema.every}."),
            (
                self.posthoc_ema.dtype in {"fp32", "fp16", "bf16"},
                f"posthoc_ema.dtype must be fp32, fp16 or bf16, got {self.posthoc_ema.dtype!r}.",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.posthoc_ema.sigma_rels:
            from .posthoc_ema import sigma_rel_to_gamma

            for s in self.posthoc_ema.sigma_rels:
                sigma_rel_to_gamma(s)  # one sentence on a width out of range

    # -- (de)serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild a config from :meth:`to_dict` output; unknown keys are an error (one sentence)."""
        return _from_dict(cls, data, "config")


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise TypeError(f"{where} must be a mapping, got {type(data).__name__}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise KeyError(f"Unknown field(s) {unknown} in {where}; known: {sorted(fields)}.")
    kwargs = {}
    for name, value in data.items():
        sub = _dataclass_type(fields[name])
        kwargs[name] = _from_dict(sub, value, f"{where}.{name}") if sub is not None else _coerce(fields[name], value)
    return cls(**kwargs)


_SECTIONS = {
    "model": ModelConfig,
    "objective": ObjectiveConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "sample": SampleConfig,
    "posthoc_ema": PostHocEMAConfig,
}


def _dataclass_type(f: dataclasses.Field) -> type | None:
    return _SECTIONS.get(f.name) if f.type in {c.__name__ for c in _SECTIONS.values()} else None


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    # JSON has no tuples; the betas field is the one tuple in the config.
    if isinstance(value, list) and "tuple" in str(f.type):
        return tuple(value)
    return value


def parse_override_value(text: str) -> Any:
    """``"2e-4"`` → 2e-4, ``"true"`` → True, ``"null"`` → None, ``"[1,2]"`` → [1, 2]; anything else stays a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        lowered = text.strip().lower()
        if lowered in {"none", "true", "false"}:
            return {"none": None, "true": True, "false": False}[lowered]
        return text


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Return a copy of ``config`` with each ``dotted.key=value`` applied.

    Keys name dataclass fields (``optim.lr``, ``max_steps``) or, inside the free-form dicts
    (``model.overrides``, ``objective.overrides``, ``data.options``, ``sample.params``), any key.
    """
    data = config.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"Override {item!r} must look like key=value (for example optim.lr=2e-4).")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node:
                raise KeyError(f"Unknown config key {key!r}: {'.'.join(parts[: i + 1])!r} does not exist.")
            node = node[part]
            if node is None:
                raise KeyError(f"Cannot set {key!r}: {'.'.join(parts[: i + 1])!r} is null.")
        leaf = parts[-1]
        free_form = _is_free_form(parts[:-1])
        if not isinstance(node, dict) or (leaf not in node and not free_form):
            raise KeyError(
                f"Unknown config key {key!r}; known keys here: {sorted(node) if isinstance(node, dict) else []}."
            )
        node[leaf] = parse_override_value(raw)
    return TrainConfig.from_dict(data)


def _is_free_form(path: list[str]) -> bool:
    return tuple(path) in {
        ("model", "overrides"),
        ("objective", "overrides"),
        ("data", "options"),
        ("sample", "params"),
    }
