"""What both JiT backbones share: attributes of the backbone contract, input checks, the position table for
any grid, loading a checkpoint whose sin-cos table was made for another grid, and the attention backend switch."""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import inspect
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pixelgen.nn import check_backend, sincos_2d_table
from pixelgen.registry import registries
from pixelgen.utils.checks import (
    check_arguments,
    check_image_batch,
    check_labels,
    check_model_input,
    check_tensor,
    check_timesteps,
    nonfinite_flags,
)

from .base import Backbone

__all__ = [
    "GRID_POSITIONS",
    "RESIDUAL_STREAMS",
    "JiTBase",
    "modulate",
    "register_family",
    "unknown_arguments_message",
    "value_checks_skipped",
    "values_checked_by_caller",
]

# How a grid other than the training one gets its position table (see JiTBase.position_table).
GRID_POSITIONS = ("original", "per_grid")
# The dtype of the token stream under autocast (see JiTBase.add_positions).
RESIDUAL_STREAMS = ("original", "float32")

log = logging.getLogger(__name__)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x·(1 + scale) + shift``; ``shift``/``scale`` broadcast over tokens."""
    return x * (1 + scale) + shift


def unknown_arguments_message(what: str, unknown: list[str], valid: list[str]) -> str:
    close = [m for u in sorted(unknown) for m in difflib.get_close_matches(u, valid, n=1, cutoff=0.6)]
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"Unknown argument(s) {', '.join(sorted(unknown))} for {what}{hint}; valid arguments: {', '.join(valid)}."


def register_family(
    arch: str, cls: type, doc: str, presets: dict[str, tuple[str, dict[str, Any]]], argument_style: str
) -> Callable[..., Any]:
    """Register the generic builder ``arch`` (keyword arguments = ``cls``'s constructor arguments, checked by
    name) and one builder per preset (the preset's config updated by keyword overrides). Returns the generic one.
    """
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def build(**kwargs: Any):
        unknown = [k for k in kwargs if k not in valid]
        if unknown:
            raise TypeError(unknown_arguments_message(f"backbone '{arch}'", unknown, valid))
        check_arguments(cls.__init__, kwargs, f"Backbone '{arch}'")
        return cls(**kwargs)

    build.__name__, build.__doc__ = f"build_{arch}", doc
    registries.backbone.register(arch)(build)

    def preset_builder(name: str, description: str, config: dict[str, Any]) -> Callable[..., Any]:
        def build_preset(**overrides: Any):
            return build(**{**config, **overrides})

        build_preset.__name__ = name
        build_preset.__doc__ = f"{description}; keyword overrides use {argument_style}'s argument names."
        return build_preset

    for name, (description, config) in presets.items():
        registries.backbone.register(name, preset_of=arch, config=dict(config))(
            preset_builder(name, description, config)
        )
    return build


_VALUES_CHECKED = contextvars.ContextVar("pixelgen_backbone_values_checked", default=False)


@contextlib.contextmanager
def values_checked_by_caller():
    """Within this block backbones skip their per-call value checks (t in [0, 1], labels in range: one host sync
    per forward on a GPU), and the objective its batch checks (pixel ranges, label range). For callers that made
    or checked those values themselves: the sampler loop (t from its grid, labels checked once), the objective
    around its model call (t drawn by it, labels checked per batch), a training step captured as a CUDA graph.
    Shape checks still run.
    """
    token = _VALUES_CHECKED.set(True)
    try:
        yield
    finally:
        _VALUES_CHECKED.reset(token)


def _recording_cuda_graph(t: torch.Tensor) -> bool:
    return t.device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def value_checks_skipped(like: torch.Tensor) -> bool:
    """True where value checks (a host sync each) must or may not run: inside ``values_checked_by_caller()``,
    while ``torch.compile`` traces and while a CUDA graph records on ``like``'s device."""
    return _VALUES_CHECKED.get() or torch.compiler.is_compiling() or _recording_cuda_graph(like)


class JiTBase(Backbone):
    """Base of the JiT backbones.

    Subclasses set ``arch``, ``cond_kind``, ``config`` (the released configs' constructor argument names),
    ``input_size``, ``patch_size``, ``hidden_size``, ``in_channels`` and a frozen ``pos_embed`` parameter for the
    default grid; the balance parameter is ``final_layer.linear.weight`` in both families.

    Two numerical settings, each a constructor keyword and a settable attribute:

    * ``residual_stream``: ``"original"`` (default) adds the position tables in the tokens' dtype, as the
      original's in-place add does, so under bf16 autocast the stream stays bf16 (class-to-image until the
      in-context tokens, whose float32 embedding promotes the concatenation; text-to-image throughout);
      ``"float32"`` lets the float32 tables promote the stream (closer to a float32 run, more memory traffic).
    * ``grid_positions``: ``"original"`` adds the stored table whenever the token count equals the training
      grid's (the original text-to-image model lays its square table over a 2x8 grid of a 16x64 input),
      ``"per_grid"`` uses the stored table only on the training grid itself. Any other token count gets the
      sin-cos table regenerated for its grid in both modes (the original cannot run there).

    ``check_inputs`` (default True) validates every forward's inputs with one-sentence errors. The value checks
    (t in [0, 1], labels in range) cost one host sync per call on a GPU; they can be turned off with
    ``model.check_inputs = False``, and are skipped while ``torch.compile`` traces the model (a host sync would
    split the graph) and while a CUDA graph records it (a host sync is not allowed there); the shape checks
    always run.
    """

    arch: str
    cond_kind: str
    pos_embed: nn.Parameter

    def __init__(self, attention_backend: str, *, residual_stream: str = "original", grid_positions: str) -> None:
        super().__init__()
        self.check_inputs = True
        self._attention_backend = check_backend(attention_backend)
        self.residual_stream = residual_stream
        self.grid_positions = grid_positions

    def balance_parameter(self) -> torch.Tensor:
        return self.final_layer.linear.weight

    @property
    def residual_stream(self) -> str:
        return self._residual_stream

    @residual_stream.setter
    def residual_stream(self, value: str) -> None:
        if value not in RESIDUAL_STREAMS:
            raise ValueError(f"residual_stream must be one of {', '.join(RESIDUAL_STREAMS)}, got {value!r}.")
        self._residual_stream = value

    @property
    def grid_positions(self) -> str:
        return self._grid_positions

    @grid_positions.setter
    def grid_positions(self, value: str) -> None:
        if value not in GRID_POSITIONS:
            raise ValueError(f"grid_positions must be one of {', '.join(GRID_POSITIONS)}, got {value!r}.")
        self._grid_positions = value

    def add_positions(self, tokens: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """``tokens + table``, in the tokens' dtype unless ``residual_stream == "float32"``."""
        out = tokens + table
        return out if self._residual_stream == "float32" else out.to(tokens.dtype)

    # -- attention backend --------------------------------------------------------------------------
    @property
    def attention_backend(self) -> str:
        """A name in ``pixelgen.nn.ATTENTION_BACKENDS`` (``"auto"``, ``"sdpa"``, ``"sdpa_cudnn"`` ...); settable at any time
        (see :mod:`pixelgen.nn.attention_backends`)."""
        return self._attention_backend

    @attention_backend.setter
    def attention_backend(self, value: str) -> None:
        self._attention_backend = check_backend(value)
        for module in self.modules():
            if module is not self and hasattr(module, "attention_backend"):
                module.attention_backend = value

    # -- grids ----------------------------------------------------------------------------------------
    @property
    def default_grid(self) -> tuple[int, int]:
        g = self.input_size // self.patch_size
        return g, g

    def position_table(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """(1, grid_h·grid_w, H): the stored ``pos_embed`` at the training grid (bit-identical; with
        ``grid_positions="original"`` at any grid of the same token count), else the same fixed sin-cos
        construction regenerated for the requested grid."""
        if (grid_h, grid_w) == self.default_grid or (
            self._grid_positions == "original" and grid_h * grid_w == self.pos_embed.shape[1]
        ):
            return self.pos_embed
        table = sincos_2d_table(self.hidden_size, grid_h, grid_w, device=self.pos_embed.device)
        return table.to(self.pos_embed.dtype).unsqueeze(0)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # A sin-cos table saved for another grid (a 256-px checkpoint loaded at 512 px) is replaced by this
        # model's own table: it is a fixed function of the grid, so nothing learnt is lost.
        key = prefix + "pos_embed"
        incoming = state_dict.get(key)
        if (
            isinstance(incoming, torch.Tensor)
            and incoming.ndim == 3
            and incoming.shape[-1] == self.hidden_size
            and incoming.shape != self.pos_embed.shape
        ):
            log.info(
                "pos_embed in the checkpoint covers %d tokens; using the sin-cos table for this model's %dx%d grid.",
                incoming.shape[1],
                *self.default_grid,
            )
            table = sincos_2d_table(self.hidden_size, *self.default_grid, device=incoming.device)
            state_dict[key] = table.to(incoming.dtype).unsqueeze(0)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # -- input checks ---------------------------------------------------------------------------------
    def _image_grid(self, x: Any, t: Any) -> tuple[int, int]:
        """The patch grid (grid_h, grid_w) of ``x``, after the shape checks of x and t when ``check_inputs``."""
        if self.check_inputs:
            return self._check_image_and_time(x, t)
        return x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size

    @staticmethod
    def _training_grid_table(input_size: int, patch_size: int, hidden_size: int) -> nn.Parameter:
        """The frozen sin-cos position table of the training grid (filled by :meth:`_init_linears_and_table`)."""
        grid = input_size // patch_size
        return nn.Parameter(torch.zeros(1, grid * grid, hidden_size), requires_grad=False)

    def _init_linears_and_table(self) -> None:
        """Xavier-uniform linear weights with zero biases, and the sin-cos table of the training grid."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.pos_embed.copy_(sincos_2d_table(self.hidden_size, *self.default_grid).unsqueeze(0))

    def _check_image_and_time(self, x: Any, t: Any) -> tuple[int, int]:
        """Shape checks for x and t (no host sync); returns the patch grid (grid_h, grid_w)."""
        check_image_batch(x, "x", channels=self.in_channels, multiple_of=self.patch_size)
        check_model_input(x, self.pos_embed, "x")
        check_tensor(t, "t", floating=True)
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"t must have shape ({x.shape[0]},) (one time per image), got {tuple(t.shape)}.")
        return x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size

    def _check_values(
        self, t: torch.Tensor, labels: torch.Tensor | None = None, finite: dict[str, torch.Tensor] | None = None
    ) -> None:
        """t in [0, 1], labels in [0, num_classes] and the ``finite`` inputs free of NaN/inf, with a single host
        sync; details only on failure."""
        if value_checks_skipped(t):
            return
        bad = [~((t >= 0) & (t <= 1))]  # NaN fails both comparisons
        if labels is not None:
            bad.append((labels < 0) | (labels > self.num_classes))
        finite = finite or {}
        flags = torch.stack([b.any() for b in bad] + nonfinite_flags(list(finite.values()))).tolist()
        for name, flag in zip(finite, flags[len(bad) :]):
            if flag:
                raise ValueError(f"{name} contains NaN or infinite values.")
        if flags[0]:
            check_timesteps(t, t.shape[0])
        if labels is not None and flags[1]:
            check_labels(labels, self.num_classes, "y")

    def _check_return_layer(self, return_layer: int | None, depth: int) -> None:
        if return_layer is not None and (
            isinstance(return_layer, bool) or not isinstance(return_layer, int) or not 0 <= return_layer <= depth
        ):
            raise ValueError(f"return_layer must be an integer block index in [0, {depth}], got {return_layer!r}.")

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, config={self.config}"
