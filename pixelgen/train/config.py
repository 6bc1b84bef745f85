"""Training configuration: typed dataclasses, JSON/YAML round trip, and ``section.field=value`` overrides.

A :class:`TrainConfig` holds everything a run needs (a text-to-image run's text encoder and grid prompts too);
the training presets build one, and command-line overrides are applied with :func:`apply_overrides`
(``"optim.lr=2e-4"``, ``"data.batch_size=16"``, ``"model.overrides.proj_drop=0.0"``). Values are parsed as JSON
when they can be (numbers, booleans, ``null``, lists, objects) and kept as strings otherwise. Every field is
checked against its type hint (:mod:`pixelgen.utils.typecheck`: booleans are not integers, ``1.5`` is not a
step count, ``betas`` needs two numbers) and then against its range, one sentence per error. The resolved
configuration is written next to the checkpoints as ``config.json`` (:meth:`TrainConfig.to_dict`) and read back
with :meth:`TrainConfig.from_dict` or :func:`load_config_file` (JSON or YAML), which replays the run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..utils.typecheck import check_dataclass

__all__ = [
    "ModelConfig",
    "ObjectiveConfig",
    "DataConfig",
    "OptimConfig",
    "SampleConfig",
    "PostHocEMAConfig",
    "TextConfig",
    "TrainConfig",
    "apply_overrides",
    "check_against_model",
    "load_config_file",
    "parse_override_value",
    "split_override",
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
    # The names of the classes in label order (read from the data): sample-grid captions, kept in the export.
    class_names: list[str] | None = None


@dataclass
class OptimConfig:
    """AdamW with the paper's settings: constant lr, no warm-up, no clipping for C2I."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float | None = None
    grad_accum: int = 1
    fused: bool | None = None  # None: fused on CUDA, the plain implementation elsewhere


def _preset_params(name: str) -> dict[str, Any]:
    from ..samplers.presets import sampling_preset

    return dict(sampling_preset(name).params)


@dataclass
class SampleConfig:
    """Periodic sample grids from the EMA model (fixed labels and noise, so grids compare over time).

    ``sampler`` and ``params`` go to ``pixelgen.build_sampler``; ``labels`` None means evenly spread classes.
    """

    sampler: str = "heun"
    params: dict[str, Any] = field(default_factory=lambda: _preset_params("xl_cfg"))
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
class TextConfig:
    """Text-to-image training: the frozen text encoder and the sample-grid prompts.

    ``encoder``: a registered conditioner name, a folder or a Hugging Face id (``Qwen/Qwen3-1.7B``), or a
    recorded ``describe()`` mapping. ``pad_mask``: mask text padding in the backbone (off by default: the
    released model attends to padding). ``prompts``: one grid image per prompt (empty: no grids).
    """

    encoder: str | dict[str, Any] = "Qwen/Qwen3-1.7B"
    pad_mask: bool = False
    prompts: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    """A whole training run.

    ``precision``: ``"auto"`` (bf16 autocast on CUDA, none on CPU), ``"bf16"``, ``"fp16"`` or ``"fp32"``; master
    weights are always fp32. ``strategy``: ``"ddp"`` (default) or ``"fsdp"`` (FSDP2 ``fully_shard``).
    ``ckpt_every``: how often ``checkpoints/latest.pt`` is rewritten; ``keep_every``: how often a numbered copy
    is kept (e.g. every 100k steps). ``init_from``: a checkpoint whose weights and EMA start a new
    run with a fresh optimiser and step 0 (stage transitions; docs/parity.md). ``max_bad_steps``: consecutive
    non-finite losses after which the run stops. ``per_sample_noise``: draw each sample's t, noise and CFG drop
    from a generator seeded by (seed, global sample index), so results do not depend on how a global batch is
    split over processes (needs an objective that reads ``batch["seeds"]``; see the trainer). ``text``: the
    text encoder and prompts of a text-to-image run (None: class-conditional).
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
    matmul_precision: str = "medium"  # torch.set_float32_matmul_precision on CUDA, as the released models were trained
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
    text: TextConfig | None = None
    dist_timeout_minutes: float = 10.0  # a collective waiting longer than this ends every rank, naming the silent one

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Fail with one sentence on a value that cannot work: first its type, then its range."""
        check_dataclass(self, "")  # the sections too (a section's hint is its dataclass)
        finite = [("optim.lr", self.optim.lr), ("optim.eps", self.optim.eps), ("ema_decay", self.ema_decay)]
        finite += [(f"optim.betas[{i}]", b) for i, b in enumerate(self.optim.betas)]
        for name, value in finite:
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}.")
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
            (
                not isinstance(self.dist_timeout_minutes, bool)
                and isinstance(self.dist_timeout_minutes, (int, float))
                and self.dist_timeout_minutes > 0,
                f"dist_timeout_minutes must be a positive number, got {self.dist_timeout_minutes!r}.",
            ),
            (self.sample.every >= 1, f"sample.every must be >= 1, got {self.sample.every}."),
            (self.sample.num_images >= 0, f"sample.num_images must be >= 0, got {self.sample.num_images}."),
            (self.posthoc_ema.every >= 1, f"posthoc_ema.every must be >= 1, got {self.posthoc_ema.every}."),
            (
                self.posthoc_ema.dtype in {"fp32", "fp16", "bf16"},
                f"posthoc_ema.dtype must be fp32, fp16 or bf16, got {self.posthoc_ema.dtype!r}.",
            ),
            (self.sample.batch_size >= 1, f"sample.batch_size must be >= 1, got {self.sample.batch_size}."),
            (self.sample.seed >= 0, f"sample.seed must be >= 0, got {self.sample.seed}."),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}."),
            (self.data.resolution >= 1, f"data.resolution must be >= 1, got {self.data.resolution}."),
            (self.data.num_workers >= 0, f"data.num_workers must be >= 0, got {self.data.num_workers}."),
            (
                all(0.0 <= b < 1.0 for b in self.optim.betas),
                f"optim.betas must lie in [0, 1), got {list(self.optim.betas)}.",
            ),
            (self.optim.eps > 0, f"optim.eps must be positive, got {self.optim.eps}."),
            (self.optim.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.optim.weight_decay}."),
            (
                self.sample.labels is None or all(label >= 0 for label in self.sample.labels),
                f"sample.labels must be class indices >= 0, got {self.sample.labels}.",
            ),
            (bool(self.model.name), "model.name must name a registered backbone, got an empty string."),
            (bool(self.data.dataset), "data.dataset must name a registered dataset, got an empty string."),
            (
                self.text is None or bool(self.text.encoder),
                "text.encoder must name a text encoder (a registered name, a folder or a Hugging Face id).",
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
        return _from_dict(cls, data, "")


def _section_type(hint: Any) -> type | None:
    """The dataclass of a section's hint (``OptimConfig`` or ``TextConfig | None``), else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise TypeError(f"{where or 'The config'} must be a mapping, got {type(data).__name__}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], list(fields), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(sorted(fields))}."
        prefix = f"{where}." if where else ""
        raise KeyError(f"Unknown config key '{prefix}{unknown[0]}'{hint}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        sub = _section_type(hints[name])
        key = f"{where}.{name}" if where else name
        kwargs[name] = _from_dict(sub, value, key) if sub is not None and isinstance(value, dict) else value
    if cls is TrainConfig:
        return cls(**kwargs)
    obj = cls(**kwargs)
    return check_dataclass(obj, where)


def split_override(item: str) -> tuple[str, Any]:
    """``"optim.lr=2e-4"`` → ``("optim.lr", 2e-4)``: the one ``KEY=VALUE`` syntax of the command line."""
    if not isinstance(item, str) or "=" not in item:
        raise ValueError(f"Override {item!r} must look like key=value (for example optim.lr=2e-4).")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ValueError(f"Override {item!r} has no key before '='.")
    return key, parse_override_value(raw)


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
        key, value = split_override(item)
        parts = key.split(".")
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
            import difflib

            known = sorted(node) if isinstance(node, dict) else []
            close = difflib.get_close_matches(leaf, known, n=1)
            hint = f"did you mean '{'.'.join([*parts[:-1], close[0]])}'?" if close else f"known keys here: {known}."
            raise KeyError(f"Unknown config key {key!r}; {hint}")
        node[leaf] = value
    return TrainConfig.from_dict(data)


def _is_free_form(path: list[str]) -> bool:
    return tuple(path) in {
        ("model", "overrides"),
        ("objective", "overrides"),
        ("data", "options"),
        ("sample", "params"),
        ("text", "encoder"),
    }


def load_config_file(path: str | os.PathLike) -> TrainConfig:
    """A :class:`TrainConfig` from a JSON or YAML file (a run's ``config.json`` replays that run)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"The config file {path} does not exist.")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        from ..utils.extras import require_extra

        yaml = require_extra("yaml", "train", feature="Reading a YAML config")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"The config file {path} is not valid YAML: {exc}.") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"The config file {path} is not valid JSON ({exc.msg} at line {exc.lineno}).") from None
    if isinstance(data, dict) and "arch" in data and "config" in data and "model" not in data:
        raise ValueError(
            f"{path} describes an exported model (arch + config), not a training run; pass the run folder's "
            "config.json (the one next to checkpoints/)."
        )
    if not isinstance(data, dict):
        raise ValueError(f"The config file {path} must hold a mapping of config sections, got {type(data).__name__}.")
    return TrainConfig.from_dict(data)


def check_against_model(config: TrainConfig, model: Any, objective: Any = None, *, data: bool = True) -> None:
    """Cross-section checks once the backbone (and objective) are built, one sentence each: the data resolution
    against the model's input size and patch size (``data=False``: the data was not built from this config), the
    REPA ``align_layer`` against the model's depth, the DINOv2 token grid against the patch size, the grid labels
    and the data's classes against the model's class count."""
    res = config.data.resolution
    input_size = getattr(model, "input_size", None)
    patch = getattr(model, "patch_size", None)
    if data and isinstance(input_size, int) and input_size != res:
        raise ValueError(
            f"data.resolution is {res} but the model '{config.model.name}' takes {input_size}-pixel images; set "
            f"model.overrides.input_size={res} or data.resolution={input_size}."
        )
    if data and isinstance(patch, int) and patch > 0 and res % patch:
        raise ValueError(
            f"data.resolution {res} is not a multiple of the model's patch size {patch}; choose a resolution "
            f"divisible by {patch} or set model.overrides.patch_size."
        )
    depth = getattr(model, "depth", None) or getattr(model, "num_blocks", None)
    if objective is not None and getattr(objective, "needs_feature", False) and isinstance(depth, int):
        layer = getattr(objective, "align_layer", None)
        if isinstance(layer, int) and not 1 <= layer <= depth:
            raise ValueError(
                f"The objective's align_layer is {layer} but the model has {depth} blocks; set "
                f"objective.overrides.align_layer to a block in 1..{depth} (REPA reads that block's features)."
            )
    dino = dict(getattr(objective, "encoders", None) or {}).get("dinov2") if objective is not None else None
    base = getattr(dino, "base_patch_size", None)
    if isinstance(base, int) and isinstance(patch, int) and base != patch:
        raise ValueError(
            f"The DINOv2 encoder is set for patch size {base} (objective.overrides.encoders.dinov2.base_patch_size) "
            f"but the model's patch size is {patch}; their token grids must match, so set base_patch_size={patch}."
        )
    classes = getattr(model, "num_classes", None)
    if getattr(model, "cond_kind", "class") == "class" and isinstance(classes, int):
        names = config.data.class_names
        if names and len(names) > classes:
            raise ValueError(
                f"The data has {len(names)} classes but the model has only {classes} "
                f"(model.overrides.num_classes); set model.overrides.num_classes={len(names)}."
            )
        labels = config.sample.labels or []
        if labels and max(labels) >= classes:
            raise ValueError(
                f"sample.labels holds class {max(labels)} but the model has {classes} classes (0..{classes - 1})."
            )
    if config.text is not None and getattr(model, "cond_kind", None) == "class":
        raise ValueError(
            f"The config has a text section (text-to-image) but the model '{config.model.name}' is "
            "class-conditional; use a text-to-image backbone (e.g. jit_t2i) or remove the text section."
        )
