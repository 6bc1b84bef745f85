"""Class recognition of generated samples: does a class-conditional model draw its classes?

A small convolutional classifier is trained on real images (augmented crops), then classifies samples the model
generates for each class; the figure is the share of samples recognised as the class they were drawn for. It is
a sanity figure for small data (the built-in demo set, a few classes of one's own photographs), not a
replacement for FID: a model that copies one image per class scores 100%.

    from pixelgen.eval.recognition import demo_recognition
    demo_recognition(model, sampler=build_sampler("heun", num_steps=10), per_class=20)["recognised"]  # e.g. 1.0
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.checks import check_labels
from .inception import check_uint8_images

__all__ = [
    "Recognizer",
    "train_recognizer",
    "classify",
    "recognition_report",
    "sample_recognition",
    "demo_reference_images",
    "demo_recognition",
    "patch_seam_ratio",
    "recognise_demo_run",
]

# The classifier's view of the demo photographs: crops from a detail to the whole frame (wider than the
# demo's training crops), drawn with their own seed so the classifier never sees the generator's exact crops.
DEMO_REFERENCE_SCALE = (0.35, 1.0)
DEMO_REFERENCE_SEED = 9_000


class Recognizer(nn.Module):
    """Three conv stages (16-32-64 channels, batch norm, 2x pooling), global average pooling, a linear head.

    About 25k parameters: trains in seconds on one CPU thread at 32 px and recognises the demo photographs'
    crops without error.
    """

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer of at least 2, got {num_classes!r}.")
        layers: list[nn.Module] = []
        channels = 3
        for stage in range(3):
            out = width * 2**stage
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            if stage < 2:
                layers.append(nn.MaxPool2d(2))
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) for images (B, 3, H, W) in [-1, 1]."""
        return self.head(self.features(x).mean(dim=(2, 3)))


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    return images.float().div(127.5).sub(1.0)


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flips, shifts of up to 1/8 of the side (reflect padding), brightness/contrast ±15%, slight noise."""
    b, _, h, w = x.shape
    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()  # one shift per batch: cheap
    x = padded[:, :, dy : dy + h, dx : dx + w]
    gain = 1.0 + 0.3 * (torch.rand(b, 1, 1, 1, generator=generator) - 0.5)
    bias = 0.3 * (torch.rand(b, 1, 1, 1, generator=generator) - 0.5)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * gain + mean + bias
    return (x + 0.03 * torch.randn(x.shape, generator=generator)).clamp(-1.0, 1.0)


def _check_images_and_labels(images: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    images = check_uint8_images(images, "images")
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},), one per image, got {tuple(labels.shape)}.")
    return images, labels.long()


def train_recognizer(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
) -> Recognizer:
    """A :class:`Recognizer` trained on uint8 ``images`` (N, 3, H, W) with integer ``labels`` (N,), augmented.

    Deterministic for the same arguments (its own generator; the global RNG is left alone). Returned in eval mode.
    """
    images, labels = _check_images_and_labels(images, labels)
    check_labels(labels, num_classes, "labels", allow_null=False)
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    generator = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        net = Recognizer(num_classes)
    x_all = _to_unit(images)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15)
    net.train()
    for _ in range(steps):
        index = torch.randint(0, len(labels), (min(batch_size, len(labels)),), generator=generator)
        loss = F.cross_entropy(net(_augment(x_all[index], generator)), labels[index], label_smoothing=0.05)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return net.eval()


@torch.no_grad()
def classify(recognizer: nn.Module, images: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """Predicted class (N,) of uint8 ``images`` (N, 3, H, W)."""
    images = check_uint8_images(images, "images")
    recognizer.eval()
    return torch.cat([recognizer(_to_unit(chunk)).argmax(dim=1) for chunk in images.split(batch_size)])


def recognition_report(
    predicted: torch.Tensor, labels: torch.Tensor, class_names: list[str] | None = None
) -> dict[str, Any]:
    """``recognised`` (the share of predictions equal to the label), per-class shares and the confusion counts."""
    predicted, labels = torch.as_tensor(predicted).long(), torch.as_tensor(labels).long()
    if predicted.shape != labels.shape or predicted.ndim != 1 or not len(labels):
        raise ValueError(
            f"predicted and labels must be equal-length 1-D tensors, got {tuple(predicted.shape)} and {tuple(labels.shape)}."
        )
    classes = sorted(set(labels.tolist()))
    if class_names is None:
        class_names = [str(c) for c in range(int(max(labels.max(), predicted.max())) + 1)]
    elif max(classes) >= len(class_names) or int(predicted.max()) >= len(class_names):
        raise ValueError(f"class_names has {len(class_names)} names, too few for the labels and predictions.")
    per_class, confusion = {}, {}
    for c in classes:
        mine = predicted[labels == c]
        per_class[class_names[c]] = float((mine == c).float().mean())
        found, counts = torch.unique(mine, return_counts=True)
        confusion[class_names[c]] = {class_names[p]: n for p, n in zip(found.tolist(), counts.tolist())}
    return {
        "recognised": float((predicted == labels).float().mean()),
        "samples": len(labels),
        "per_class": per_class,
        "confusion": confusion,
    }


def sample_recognition(
    model: nn.Module,
    recognizer: nn.Module,
    *,
    sampler: Any = "euler",
    per_class: int = 20,
    seed: int = 0,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    class_names: list[str] | None = None,
) -> dict[str, Any]:
    """Generate ``per_class`` samples of every class of ``model`` and report how many ``recognizer`` recognises.

    With a patch-based model the report also holds ``patch_seams`` (:func:`patch_seam_ratio` of the samples).
    """
    from ..samplers import generate

    num_classes = getattr(model, "num_classes", None)
    if not isinstance(num_classes, int) or getattr(model, "cond_kind", "class") != "class":
        raise TypeError("sample_recognition needs a class-conditional model (an integer num_classes).")
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class must be a positive integer, got {per_class!r}.")
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = generate(model, labels, sampler=sampler, seed=seed, batch_size=batch_size, device=device, progress=False)
    report = recognition_report(classify(recognizer, images), labels, class_names)
    patch = getattr(model, "patch_size", None)
    if isinstance(patch, int) and 2 <= patch < min(images.shape[-2:]):
        report["patch_seams"] = patch_seam_ratio(images, patch)
    return report


def demo_reference_images(resolution: int, *, per_class: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier's real images of the demo classes: uint8 crops (per_class x classes, 3, R, R) and labels."""
    from ..data.demo import DemoDataset

    data = DemoDataset(
        resolution, samples_per_class=per_class, seed=DEMO_REFERENCE_SEED, crop_scale=DEMO_REFERENCE_SCALE
    )
    labels = torch.tensor([data.label(i) for i in range(len(data))])
    return data.pixels, labels


def demo_recognition(
    model: nn.Module,
    *,
    sampler: Any = "euler",
    per_class: int = 20,
    seed: int = 0,
    classifier_steps: int = 300,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """The recognition figure of a model trained on the built-in demo set (see the module docstring).

    ``seed`` seeds the samples; the classifier is trained with a fixed seed, so figures of different models compare.

    Also reports ``classifier_real`` — the classifier's share on held-out real crops — so a low figure can be
    told apart from a classifier that fails on real images.
    """
    from ..data.demo import DEMO_CLASSES

    names = [name for name, _, _ in DEMO_CLASSES]
    if getattr(model, "num_classes", None) != len(names):
        raise ValueError(
            f"demo_recognition needs a model of the {len(names)} demo classes, got num_classes="
            f"{getattr(model, 'num_classes', None)!r}."
        )
    size = int(model.input_size)
    images, labels = demo_reference_images(size)
    with torch.random.fork_rng(devices=[]):
        # The classifier's own fixed seed: the same judge for every model and sampling seed.
        recognizer = train_recognizer(images, labels, len(names), steps=classifier_steps, seed=0)
        held_out, held_labels = _held_out_crops(size)
        report = sample_recognition(
            model, recognizer, sampler=sampler, per_class=per_class, seed=seed, device=device, class_names=names
        )
    report["classifier_real"] = float((classify(recognizer, held_out) == held_labels).float().mean())
    return report


def _held_out_crops(resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    from ..data.demo import DemoDataset

    data = DemoDataset(resolution, samples_per_class=16, seed=DEMO_REFERENCE_SEED + 1, crop_scale=DEMO_REFERENCE_SCALE)
    return data.pixels, torch.tensor([data.label(i) for i in range(len(data))])


def patch_seam_ratio(images: torch.Tensor, patch_size: int) -> float:
    """How much more pixels change across the patch borders than inside patches (1.0: no visible patch grid).

    The mean absolute difference of neighbouring pixels that straddle a border of the ``patch_size`` grid,
    divided by the mean over neighbours inside a patch, both directions. Photographs score about 1; samples
    drawn as blocks of colour score far higher.
    """
    images = check_uint8_images(images, "images")
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 2:
        raise ValueError(f"patch_size must be an integer of at least 2, got {patch_size!r}.")
    if images.shape[-1] <= patch_size or images.shape[-2] <= patch_size:
        raise ValueError(f"The images ({tuple(images.shape[-2:])}) must be larger than one patch ({patch_size}).")
    x = images.float()
    across, inside = [], []
    for dim in (-1, -2):
        diff = x.diff(dim=dim).abs()  # diff[..., i] is between pixels i and i+1
        border = (torch.arange(diff.shape[dim]) + 1) % patch_size == 0
        moved = diff.movedim(dim, 0)
        across.append(moved[border].flatten())
        inside.append(moved[~border].flatten())
    eps = 1e-3  # constant images (no change anywhere) show no grid: ratio 1
    return float((torch.cat(across).mean() + eps) / (torch.cat(inside).mean() + eps))


# Samples per class and classifier steps of the figure that closes a run on the built-in demo set.
DEMO_PER_CLASS = 20
DEMO_CLASSIFIER_STEPS = 300


def recognise_demo_run(config: Any, export_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Any]:
    """The recognition figure of a finished run on the demo set: the exported EMA model, the run's grid sampler
    and seed; the full report is written to ``<out_dir>/recognition.json`` (returned, with its ``path``)."""
    from ..checkpoint import load_pretrained
    from ..samplers import build_sampler
    from ..utils.io import atomic_save_json

    s = config.sample
    threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)  # as during training (tiny tensors, possibly shared cores)
    try:
        report = demo_recognition(
            load_pretrained(export_dir),
            sampler=build_sampler(s.sampler, **s.params),
            per_class=DEMO_PER_CLASS,
            seed=s.seed,
            classifier_steps=DEMO_CLASSIFIER_STEPS,
        )
    finally:
        torch.set_num_threads(threads)
    report["sampler"] = {"name": s.sampler, **s.params}
    path = atomic_save_json(report, Path(out_dir) / "recognition.json")
    return {**report, "path": str(path)}
