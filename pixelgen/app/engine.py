"""What the web page runs, without the page: load a model folder, check the page's settings, sample through the
library's own generation loop, and say which command reproduces the result.

The page only formats what :meth:`DemoModel.run` returns, so everything here is usable (and tested) without
gradio. Images come from :func:`pixelgen.generate` (class-to-image) or
:class:`~pixelgen.conditioners.pipeline.TextToImagePipeline` (text-to-image), the same code ``pixelgen generate``
runs; the sampler's per-step callback hands the page x̂ along the way and its progress.
"""

from __future__ import annotations

import json
import math
import shlex
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["DemoModel", "DemoSettings", "DemoResult", "DemoInputError", "default_settings"]

MAX_IMAGES = 16
MAX_SCALE = 4  # largest resolution on the page, in multiples of the model's own (memory grows as its 4th power)
TRAJECTORY_FRAMES = 6  # x̂ snapshots in the strip
THUMBNAIL = 128  # longest side of one image inside a trajectory frame
GIF_MS = 200
FRAME_SIDE = 192  # trajectory pictures are enlarged to at least this many pixels


class DemoInputError(ValueError):
    """A setting on the page that cannot be used; its message is shown on the page as it is."""


@dataclass
class DemoSettings:
    """Everything the page lets a person choose. ``resolution`` None means the model's own."""

    sampler: str = "heun"
    steps: int = 50
    guidance: float = 1.0
    interval_min: float = 0.0
    interval_max: float = 1.0
    shift: float = 1.0
    order: int = 2
    seed: int = 0
    num_images: int = 4
    resolution: int | None = None
    class_label: int | None = None
    prompt: str = ""
    negative_prompt: str = ""

    def sampler_params(self) -> dict[str, Any]:
        """The sampler's keyword arguments (its own parameter names)."""
        params: dict[str, Any] = {
            "num_steps": self.steps,
            "guidance": self.guidance,
            "guidance_interval_min": self.interval_min,
            "guidance_interval_max": self.interval_max,
            "timeshift": self.shift,
        }
        if self.sampler == "adams":
            params["order"] = self.order
        return params


def default_settings(kind: str) -> DemoSettings:
    """What the page starts with. Text models: the settings of the released text-to-image model's demo
    (Adams-2, 25 steps, CFG 4, shift 3, 4 images, seed 0, its prompt and negative prompt). Class models: Heun 50
    with shift 2 and the interval (0.1, 0.9] of the paper's XL setting, guidance 1 (a small model's samples
    saturate under CFG)."""
    if kind == "text":
        return DemoSettings(
            sampler="adams",
            steps=25,
            guidance=4.0,
            shift=3.0,
            order=2,
            prompt="A beautiful woman.",
            negative_prompt="Unrealistic, JPEG artifacts.",
        )
    return DemoSettings(sampler="heun", steps=50, guidance=1.0, interval_min=0.1, interval_max=0.9, shift=2.0)


@dataclass
class DemoResult:
    """``images``: uint8 (N, 3, S, S); ``frames``: (t, uint8 (N, 3, s, s) thumbnails of the guided x̂) per network
    evaluation time, in sampling order; ``nfe`` / ``rows``: the sampler's counts; ``seconds``: wall time."""

    settings: DemoSettings
    images: torch.Tensor
    frames: list[tuple[float, torch.Tensor]]
    nfe: int
    rows: int
    seconds: float
    device: str
    command: str
    captions: list[str] = field(default_factory=list)

    def strip(self, count: int = TRAJECTORY_FRAMES) -> list[tuple[float, torch.Tensor]]:
        """``count`` frames spread evenly over the trajectory, the last evaluation always included."""
        if len(self.frames) <= count:
            return list(self.frames)
        picks = np.linspace(0, len(self.frames) - 1, count).round().astype(int)
        return [self.frames[i] for i in sorted(set(picks.tolist()))]

    def stats_line(self) -> str:
        per_image = self.rows / max(1, self.images.shape[0])
        return (
            f"{self.nfe} network evaluations, {self.rows} rows ({per_image:g} per image), "
            f"{self.seconds:.2f} s on {self.device}"
        )


def tile(images: torch.Tensor, columns: int | None = None, min_side: int = 0) -> np.ndarray:
    """uint8 (N, 3, H, W) → one HWC uint8 picture, ``columns`` per row (default: a square-ish grid), enlarged by
    an integer factor (nearest neighbour: the pixels stay visible) until its shorter side is at least ``min_side``."""
    from torchvision.utils import make_grid

    n = images.shape[0]
    grid = make_grid(images, nrow=columns or math.ceil(math.sqrt(n)), padding=1, pad_value=255)
    picture = grid.permute(1, 2, 0).numpy()
    factor = max(1, math.ceil(min_side / min(picture.shape[:2]))) if min_side else 1
    return picture.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else picture


def _thumbnails(images: torch.Tensor) -> torch.Tensor:
    """Shrink uint8 (N, 3, H, W) so the longest side is at most THUMBNAIL (trajectory frames stay small)."""
    side = max(images.shape[-2:])
    if side <= THUMBNAIL:
        return images
    factor = math.ceil(side / THUMBNAIL)
    return torch.nn.functional.avg_pool2d(images.float(), factor).round().to(torch.uint8)


class _Recorder:
    """The sampler's per-step callback: keeps the guided x̂ at each step's start (as uint8 thumbnails, keyed by
    t) and reports progress as (steps done, steps)."""

    def __init__(self, steps: int, on_progress: Callable[[int, int], None] | None = None) -> None:
        self.steps = steps
        self.on_progress = on_progress
        self.frames: dict[float, torch.Tensor] = {}

    def __call__(self, info: dict[str, Any]) -> None:
        from pixelgen.generate import to_uint8

        x_hat = info.get("x_hat")
        if x_hat is not None:  # None where a step did not evaluate at its start (lazy Heun)
            self.frames[float(info["t"])] = _thumbnails(to_uint8(x_hat.detach()).cpu())
        if self.on_progress is not None:
            self.on_progress(int(info["i"]) + 1, self.steps)


def _read_config(folder: Path) -> dict[str, Any]:
    from pixelgen.checkpoint import CONFIG_NAME, WEIGHTS_NAME

    if not folder.exists():
        raise FileNotFoundError(f"The checkpoint folder {folder} does not exist.")
    if not folder.is_dir():
        raise ValueError(f"--checkpoint must be a folder with {WEIGHTS_NAME} and {CONFIG_NAME}, got the file {folder}.")
    path = folder / CONFIG_NAME
    if not path.is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(
            f"{folder} has no {WEIGHTS_NAME} + {CONFIG_NAME} (export a run with save_pretrained, or use the "
            "export/ folder that training leaves)."
        )
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}).") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("arch"), str) or not isinstance(meta.get("config"), dict):
        raise ValueError(f"{path} is not a pixelgen config (it needs 'arch' and 'config').")
    return meta


def _class_names(meta: dict[str, Any], num_classes: int) -> list[str] | None:
    """``class_names`` from config.json when it is a list of one string per class, else None (numbers are shown)."""
    names = meta.get("class_names")
    if isinstance(names, list) and len(names) == num_classes and all(isinstance(n, str) for n in names):
        return names
    return None


def _float_of(value: Any, name: str, noun: str) -> float:
    """``float(value)``, or a sentence asking for a ``noun`` ("number", "whole number") when it is empty or not one."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DemoInputError(f"{name} is empty; enter a {noun}.")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DemoInputError(f"{name} must be a {noun}, got {value!r}.") from None


def _integer(value: Any, name: str, low: int, high: int | None = None) -> int:
    """Gradio numbers arrive as floats (or None when a box is emptied): an integer in [low, high] or a sentence."""
    number = _float_of(value, name, "whole number")
    if not math.isfinite(number) or number != int(number):
        raise DemoInputError(f"{name} must be a whole number, got {value!r}.")
    number = int(number)
    if number < low or (high is not None and number > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise DemoInputError(f"{name} must be {bound}, got {number}.")
    return number


def _real(value: Any, name: str, low: float | None = None, high: float | None = None) -> float:
    number = _float_of(value, name, "number")
    if not math.isfinite(number):
        raise DemoInputError(f"{name} must be a finite number, got {value!r}.")
    if (low is not None and number < low) or (high is not None and number > high):
        raise DemoInputError(f"{name} must lie in [{low}, {high}], got {number:g}.")
    return number


class DemoModel:
    """A model folder (``model.safetensors`` + ``config.json``) ready for the page.

    - ``kind``: ``"class"`` or ``"text"``, read from the folder; ``class_names`` from config.json's
      ``class_names`` when it has one per class, else None.
    - ``device``: default cuda when available; ``precision``: ``"auto"`` (bf16 autocast on CUDA, float32 on
      CPU), ``"bf16"`` or ``"fp32"``.
    - :meth:`run` is serialised by a lock: one model, one sampling at a time (the page queues requests).
    """

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        device: str | torch.device | None = None,
        precision: str = "auto",
        text_encoder: str | None = None,
    ) -> None:
        from pixelgen.backbones import build_model

        self.folder = Path(checkpoint)
        self.meta = _read_config(self.folder)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', got {precision!r}.")
        use_bf16 = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")
        self.precision = "bf16" if use_bf16 else "fp32"
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None
        probe = build_model(self.meta["arch"], device="meta", **self.meta["config"])
        self.kind = getattr(probe, "cond_kind", "class")
        if self.kind not in ("class", "text"):
            raise ValueError(
                f"{self.folder} holds a model with conditioning {self.kind!r}; the page knows class and text."
            )
        self.text_encoder = text_encoder
        self.pipeline = None
        if self.kind == "text":
            from pixelgen.conditioners.pipeline import TextToImagePipeline

            self.pipeline = TextToImagePipeline.from_pretrained(
                self.folder, text_encoder=text_encoder, device=self.device, autocast_dtype=self.autocast_dtype
            )
            self.model = self.pipeline.model
            self.num_classes = 0
            self.class_names = None
        else:
            from pixelgen.checkpoint import load_pretrained

            self.model = load_pretrained(self.folder, device=self.device)
            self.num_classes = int(self.model.num_classes)
            self.class_names = _class_names(self.meta, self.num_classes)
        self.input_size = int(self.model.input_size)
        self.patch_size = int(self.model.patch_size)
        self._resized: tuple[int, torch.nn.Module] | None = None
        self._lock = threading.Lock()

    # -- what the page shows ------------------------------------------------------------------------------
    def class_choices(self) -> list[tuple[str, int]]:
        """(label shown, class index) for the class picker."""
        if self.kind != "class":
            return []
        if self.class_names:
            return [(f"{i}: {name}", i) for i, name in enumerate(self.class_names)]
        return [(str(i), i) for i in range(self.num_classes)]

    def class_name(self, label: int) -> str:
        return self.class_names[label] if self.class_names else f"class {label}"

    def describe(self) -> str:
        what = (
            f"class-to-image, {self.num_classes} classes" + (" (named)" if self.class_names else "")
            if self.kind == "class"
            else "text-to-image"
        )
        params = sum(p.numel() for p in self.model.parameters())
        return (
            f"{self.folder} · {self.meta['arch']} · {what} · {self.input_size} px, patch {self.patch_size} · "
            f"{params / 1e6:.2f}M parameters · {self.device} ({self.precision})"
        )

    # -- checks ------------------------------------------------------------------------------------------
    def check(self, settings: DemoSettings) -> DemoSettings:
        """The settings with numbers as integers/floats, or a :class:`DemoInputError` saying what is wrong."""
        from pixelgen.samplers import list_samplers

        s = DemoSettings(**asdict(settings))
        samplers = list_samplers()
        if s.sampler not in samplers:
            raise DemoInputError(f"Unknown sampler {s.sampler!r}; choose one of {', '.join(samplers)}.")
        s.steps = _integer(s.steps, "Steps", 1, 1000)
        s.guidance = _real(s.guidance, "Guidance scale", 0.0, 100.0)
        s.interval_min = _real(s.interval_min, "Guidance interval start", 0.0, 1.0)
        s.interval_max = _real(s.interval_max, "Guidance interval end", 0.0, 1.0)
        if s.interval_min >= s.interval_max:
            raise DemoInputError(
                f"The guidance interval is empty: its start ({s.interval_min:g}) must be below its end "
                f"({s.interval_max:g})."
            )
        s.shift = _real(s.shift, "Time shift", 0.01, 100.0)
        s.order = _integer(s.order, "Adams order", 1, 4)
        s.seed = _integer(s.seed, "Seed", 0, 2**53)  # exact as a float (what the page sends)
        s.num_images = _integer(s.num_images, "Number of images", 1, MAX_IMAGES)
        if s.resolution is None or (isinstance(s.resolution, str) and not s.resolution.strip()):
            s.resolution = self.input_size
        largest = MAX_SCALE * self.input_size
        s.resolution = _integer(s.resolution, "Resolution", 1, None)
        if s.resolution > largest:
            raise DemoInputError(
                f"Resolution {s.resolution} is more than {MAX_SCALE} times this model's own ({self.input_size}); "
                f"the page samples up to {largest}."
            )
        if s.resolution % self.patch_size:
            low = max(self.patch_size, s.resolution // self.patch_size * self.patch_size)
            raise DemoInputError(
                f"This model takes resolutions that are multiples of its patch size {self.patch_size} "
                f"({self.input_size} is its own); {s.resolution} is not: try {low} or {low + self.patch_size}."
            )
        if self.kind == "class":
            if s.class_label is None:
                raise DemoInputError("Choose a class.")
            s.class_label = _integer(s.class_label, "Class", 0, self.num_classes - 1)
        else:
            s.prompt = (s.prompt or "").strip()
            s.negative_prompt = (s.negative_prompt or "").strip()
            if not s.prompt:
                raise DemoInputError("The prompt is empty; describe the image you want.")
        return s

    # -- sampling ----------------------------------------------------------------------------------------
    def _model_at(self, resolution: int) -> torch.nn.Module:
        """The class model at ``resolution`` (the folder loaded with that input size, as ``pixelgen generate
        --resolution`` loads it); one other resolution is kept at a time."""
        if resolution == self.input_size:
            return self.model
        if self._resized is None or self._resized[0] != resolution:
            from pixelgen.checkpoint import load_pretrained

            self._resized = None  # free the previous one first
            self._resized = (resolution, load_pretrained(self.folder, device=self.device, input_size=resolution))
        return self._resized[1]

    def run(self, settings: DemoSettings, on_progress: Callable[[int, int], None] | None = None) -> DemoResult:
        """Sample with ``settings`` (checked first). ``on_progress(step, steps)`` is called at each step."""
        from pixelgen.samplers import build_sampler

        s = self.check(settings)
        try:  # text models: the pipeline's sampler (the released model's settings under ours), as the command
            build = self.pipeline.build_sampler if self.pipeline is not None else build_sampler
            sampler = build(s.sampler, **s.sampler_params())
        except (TypeError, ValueError) as exc:
            raise DemoInputError(str(exc)) from None
        recorder = _Recorder(s.steps, on_progress)
        with self._lock:
            start = time.perf_counter()
            if self.kind == "class":
                from pixelgen.samplers import generate

                images = generate(
                    self._model_at(s.resolution),
                    torch.full((s.num_images,), s.class_label, dtype=torch.long),
                    sampler=sampler,
                    seed=s.seed,
                    batch_size=s.num_images,
                    device=self.device,
                    autocast_dtype=self.autocast_dtype,
                    progress=False,
                    callback=recorder,
                )
                captions = [f"{self.class_name(s.class_label)} · #{k}" for k in range(s.num_images)]
            else:
                images = self._run_text(s, sampler, recorder)
                captions = [f"#{k}" for k in range(s.num_images)]
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - start
        frames = sorted(recorder.frames.items())
        stats = sampler.last_stats  # one batch: all images
        return DemoResult(
            settings=s,
            images=images,
            frames=frames,
            nfe=int(stats["nfe"]),
            rows=int(stats["rows"]),
            seconds=seconds,
            device=f"{self.device} ({self.precision})",
            command=self.command(s),
            captions=captions,
        )

    def _run_text(self, s: DemoSettings, sampler: Any, recorder: _Recorder) -> torch.Tensor:
        result = self.pipeline(
            [s.prompt],
            negative_prompt=s.negative_prompt or None,
            num_images_per_prompt=s.num_images,
            seed=s.seed,
            height=s.resolution,
            width=s.resolution,
            batch_size=s.num_images,
            sampler=sampler,
            callback=recorder,
        )
        return result.images

    # -- reproduction ------------------------------------------------------------------------------------
    def command(self, s: DemoSettings) -> str:
        """The ``pixelgen generate`` command that writes the same images."""
        args = ["pixelgen", "generate", "--checkpoint", str(self.folder)]
        if self.kind == "class":
            args += ["--class", str(s.class_label)]
        else:
            args += ["--prompt", s.prompt]
            if s.negative_prompt:
                args += ["--negative-prompt", s.negative_prompt]
            if self.text_encoder:
                args += ["--text-encoder", self.text_encoder]
        args += ["--num", str(s.num_images), "--seed", str(s.seed), "--sampler", s.sampler]
        args += ["--steps", str(s.steps), "--guidance", f"{s.guidance:g}"]
        args += ["--interval", f"{s.interval_min:g}", f"{s.interval_max:g}", "--shift", f"{s.shift:g}"]
        if s.sampler == "adams":
            args += ["--order", str(s.order)]
        if s.resolution != self.input_size:
            args += ["--resolution", str(s.resolution)]
        args += ["--device", self.device.type, "--precision", self.precision, "--out", "generated"]
        return shlex.join(args)


# -- files for the page ------------------------------------------------------------------------------------
def save_outputs(result: DemoResult, folder: Path) -> dict[str, Path]:
    """PNG per image, the trajectory GIF and a zip of both plus settings.json (with the command) in ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    pngs = []
    for k, image in enumerate(result.images):
        path = folder / f"image_{k:02d}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
        pngs.append(path)
    frames = [Image.fromarray(tile(f, min_side=FRAME_SIDE)) for _, f in result.frames]
    final = Image.fromarray(tile(_thumbnails(result.images), min_side=FRAME_SIDE))
    frames.append(final)
    gif = folder / "trajectory.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=GIF_MS, loop=0)
    settings = {
        **asdict(result.settings),
        "command": result.command,
        "nfe": result.nfe,
        "rows": result.rows,
        "seconds": round(result.seconds, 3),
        "device": result.device,
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    archive = folder / "images.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for path in [*pngs, gif, folder / "settings.json"]:
            z.write(path, path.name)
    return {"gif": gif, "zip": archive, "pngs": pngs}
