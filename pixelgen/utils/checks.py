"""Input checks shared by every public entry point: each failure is one clear sentence."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "check_tensor",
    "check_image_batch",
    "check_labels",
    "check_timesteps",
    "check_same_shape",
    "check_real",
    "check_arguments",
    "check_device",
    "check_model_input",
    "check_class_labels_input",
    "check_loss_weight",
    "nonfinite_flags",
    "looks_like_unit_range",
    "raise_if_inputs_not_finite",
]


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def check_tensor(x: object, name: str, *, ndim: int | None = None, floating: bool | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {_shape(x)}.")
    if floating is True and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}.")
    if floating is False and x.is_floating_point():
        raise TypeError(f"{name} must be an integer tensor, got {x.dtype}.")
    return x


def check_image_batch(
    x: object,
    name: str = "x",
    *,
    channels: int | None = None,
    size: int | Sequence[int] | None = None,
    multiple_of: int | None = None,
) -> torch.Tensor:
    """A (B, C, H, W) floating tensor with the expected channels / size / divisibility."""
    x = check_tensor(x, name, ndim=4, floating=True)
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{name} must have {channels} channels, got shape {_shape(x)} (expected (B, {channels}, H, W))."
        )
    h, w = x.shape[-2:]
    if size is not None:
        hs, ws = (size, size) if isinstance(size, int) else tuple(size)
        if (h, w) != (hs, ws):
            raise ValueError(f"{name} must be {hs}x{ws} pixels for this model, got {h}x{w}.")
    if multiple_of is not None and (h % multiple_of or w % multiple_of):
        raise ValueError(f"{name} is {h}x{w} pixels, which is not a multiple of the patch size {multiple_of}.")
    return x


def _min_max(x: torch.Tensor) -> tuple[float, float]:
    """(min, max) of a non-empty tensor with a single device-to-host transfer (NaN propagates into both)."""
    low, high = torch.aminmax(x.detach())
    return tuple(torch.stack([low, high]).tolist())


def check_labels(
    y: object, num_classes: int, name: str = "y", *, allow_null: bool = True, batch: int | None = None
) -> torch.Tensor:
    """Integer labels in [0, num_classes) (or == num_classes, the null class, when allowed)."""
    y = check_tensor(y, name, ndim=1, floating=False)
    if batch is not None and y.shape[0] != batch:
        raise ValueError(f"{name} has {y.shape[0]} labels but the batch has {batch} images.")
    hi = num_classes if allow_null else num_classes - 1
    if not y.numel():
        return y
    low, high = _min_max(y)
    if low < 0 or high > hi:
        raise ValueError(
            f"{name} must be class indices in [0, {hi}]"
            + (f" ({num_classes} is the null class)" if allow_null else "")
            + f", got values in [{low}, {high}]."
        )
    return y


def check_timesteps(t: object, batch: int, name: str = "t") -> torch.Tensor:
    t = check_tensor(t, name, floating=True)
    if t.ndim != 1 or t.shape[0] != batch:
        raise ValueError(f"{name} must have shape ({batch},) (one time per image), got {_shape(t)}.")
    if not t.numel():
        return t
    low, high = _min_max(t)
    if not (0.0 <= low and high <= 1.0):  # NaN fails both comparisons
        got = "NaN" if math.isnan(low) else f"values in [{low:.4g}, {high:.4g}]"
        raise ValueError(f"{name} must lie in [0, 1] (0 = noise, 1 = data), got {got}.")
    return t


def check_same_shape(a: torch.Tensor, b: torch.Tensor, na: str, nb: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{na} and {nb} must have the same shape, got {_shape(a)} and {_shape(b)}.")


# -- arguments ----------------------------------------------------------------------------------------------
def _type_name(value: object) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, torch.Tensor) else f"a tensor {_shape(value)}"


def check_real(
    value: object, name: str, *, minimum: float | None = None, maximum: float | None = None, finite: bool = True
) -> float:
    """A real number (int or float, not a bool or a string), finite unless ``finite=False``, within bounds."""
    import numpy as np

    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {_type_name(value)}.")
    value = float(value)
    if finite and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}.")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum:g}, got {value:g}.")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum:g}, got {value:g}.")
    return value


def _accepts(value: object, hint: object) -> bool | None:
    """Whether ``value`` fits the annotation ``hint`` (None: the annotation is not one this check knows)."""
    import types
    import typing

    import numpy as np

    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        answers = [_accepts(value, h) for h in typing.get_args(hint)]
        return True if any(answers) else (None if None in answers else False)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, (bool, np.bool_))
    if hint is int:
        return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if hint is float:
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if hint is str:
        return isinstance(value, str)
    return None


def check_arguments(fn: object, arguments: dict, what: str) -> None:
    """Check keyword ``arguments`` against the ``int`` / ``float`` / ``bool`` / ``str`` (and ``| None``)
    annotations of ``fn``: one sentence naming the argument, the expected type and the value given.

    Catches ``depth=True``, ``hidden_size="64"``, ``use_bottleneck="no"`` before they fail deep inside (or,
    worse, are taken silently). Arguments with other annotations are left to ``fn``.
    """
    import typing

    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: nothing to check against
        return
    names = {int: "an integer", float: "a number", bool: "True or False", str: "a string"}
    for key, value in arguments.items():
        hint = hints.get(key)
        if hint is None or _accepts(value, hint) is not False:
            continue
        allowed = [names[h] for h in typing.get_args(hint) or (hint,) if h in names]
        if type(None) in typing.get_args(hint):
            allowed.append("None")
        raise TypeError(f"{what} argument {key} must be {' or '.join(allowed)}, got {_type_name(value)}.")


def check_device(device: object, name: str = "device") -> torch.device:
    """A torch device that exists on this machine (a CUDA device without CUDA is one sentence, not a driver error)."""
    if isinstance(device, torch.device):
        parsed = device
    elif isinstance(device, (str, int)) and not isinstance(device, bool):
        try:
            parsed = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(
                f"{name} must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got {device!r}."
            ) from None
    else:
        raise TypeError(f"{name} must be a torch.device or a string such as 'cuda', got {type(device).__name__}.")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}={str(device)!r} was asked for, but CUDA is not available on this machine.")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(
                f"{name}={str(device)!r} was asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)."
            )
    elif parsed.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"{name}={str(device)!r} was asked for, but MPS is not available on this machine.")
    return parsed


def check_model_input(x: torch.Tensor, like: torch.Tensor, name: str = "x") -> None:
    """``x`` can go through a model whose weights look like ``like``: a non-empty batch on the same device, and
    the same floating dtype unless autocast is on (no host sync)."""
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {_shape(x)}); pass at least one image.")
    if x.device != like.device and like.device.type != "meta":
        raise ValueError(f"{name} is on {x.device} but the model is on {like.device}; move one of them (.to(device)).")
    if x.dtype != like.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(
            f"{name} is {str(x.dtype).removeprefix('torch.')} but the model's weights are "
            f"{str(like.dtype).removeprefix('torch.')}; cast one to the other or run under torch.autocast."
        )


def nonfinite_flags(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """One 0-dim bool per tensor, True where it holds a NaN or an infinity (to batch into an existing sync)."""
    return [~torch.isfinite(t).all() for t in tensors]


def check_class_labels_input(y: object, batch: int, name: str = "y") -> torch.Tensor:
    """(B,) integer class labels for a class-conditional model (shapes and dtype only, no host sync)."""
    if isinstance(y, torch.Tensor) and (y.is_floating_point() or y.ndim != 1):
        looks = " (it looks like text embeddings, which a text-to-image model takes)" if y.ndim == 3 else ""
        raise TypeError(
            f"{name} must be a ({batch},) tensor of integer class labels for this class-conditional model, got a "
            f"{str(y.dtype).removeprefix('torch.')} tensor of shape {_shape(y)}{looks}."
        )
    y = check_tensor(y, name, ndim=1, floating=False)
    if y.shape[0] != batch:
        raise ValueError(f"{name} has {y.shape[0]} labels but the batch has {batch} images.")
    return y


def check_loss_weight(value: object, name: str) -> float:
    """A loss weight: a finite number >= 0."""
    return check_real(value, name, minimum=0.0)


def looks_like_unit_range(minimum: float, maximum: float, batch: int) -> bool:
    """A batch of several natural images in [-1, 1] always has negative values somewhere; one with none, and
    that reaches above 0.5, was almost surely given in [0, 1]."""
    return batch >= 2 and minimum >= 0.0 and maximum > 0.5


def raise_if_inputs_not_finite(inputs: dict, cause: BaseException | None = None) -> None:
    """After a non-finite result: raise ``ValueError`` naming the first floating input tensor that holds NaN or
    inf (called only on the error path, so the normal path pays no host sync)."""
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} contains NaN or infinite values.") from cause
