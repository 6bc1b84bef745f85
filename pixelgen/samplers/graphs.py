"""CUDA-graph replay of a denoiser for fixed-shape sampling loops.

A sampling run calls the network with the same shapes at every step (B rows, or 2B on guided steps), so each
call can be recorded once as a CUDA graph and replayed: one launch per network evaluation instead of
hundreds of kernel launches, which removes the CPU launch gaps between small kernels.

>>> denoiser = GraphedDenoiser(model)                 # on CUDA tensors: graphs; elsewhere: plain calls
>>> x = sampler(denoiser, noise, labels, null_labels)  # under torch.inference_mode() and optional autocast
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["GraphedDenoiser"]

_Key = tuple[Any, ...]


def _signature(value: torch.Tensor) -> tuple[Any, ...]:
    return (tuple(value.shape), value.dtype, value.device)


class GraphedDenoiser:
    """Wraps ``denoiser(x, t, cond) -> x̂`` and replays one CUDA graph per input signature.

    Used only for CUDA tensor inputs (a tensor ``cond``) with gradients off (``torch.no_grad`` / ``torch.inference_mode``); any other call
    goes straight to ``denoiser``, so the wrapper is safe everywhere and changes no result. A signature is the
    shapes, dtypes and devices of ``x``, ``t`` and ``cond`` plus the autocast state; the first call with a new
    signature runs ``warmup_calls`` eager calls on a side stream (kernel selection, lazy initialisation), then
    records one call. Replays copy the inputs into the recorded buffers and return a copy of the output, so
    results never alias the graph's memory.

    Autocast is re-entered without its weight-cast cache while recording (cached casts would live outside the
    graph's memory), so the casts of float32 weights are part of every replay; a model already in bf16 has
    none. The network must not change between replays (weights are read in place, so in-place weight updates
    are seen; replacing modules or changing Python-side settings is not).

    ``enabled=False`` turns the wrapper into a plain pass-through (for comparisons).
    """

    graph_devices: tuple[str, ...] = ("cuda",)
    """Device types whose calls are recorded (CUDA graphs exist only there)."""

    def __init__(
        self,
        denoiser: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor],
        *,
        warmup_calls: int = 2,
        enabled: bool = True,
    ):
        if not callable(denoiser):
            raise TypeError(f"denoiser must be callable as denoiser(x, t, cond), got {type(denoiser).__name__}.")
        if isinstance(warmup_calls, bool) or not isinstance(warmup_calls, int) or warmup_calls < 1:
            raise ValueError(
                f"warmup_calls must be a positive integer (graphs need a warmed-up network), got {warmup_calls!r}."
            )
        self.denoiser = denoiser
        self.warmup_calls = warmup_calls
        self.enabled = bool(enabled)
        self._graphs: dict[_Key, tuple[Callable[[], None], tuple[torch.Tensor, ...], torch.Tensor]] = {}
        self._pool: Any = None
        self.replays = 0

    @property
    def num_graphs(self) -> int:
        """How many input signatures have been recorded."""
        return len(self._graphs)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        if (
            not self.enabled
            or x.device.type not in self.graph_devices
            or torch.is_grad_enabled()
            or not isinstance(cond, torch.Tensor)
        ):
            return self.denoiser(x, t, cond)
        autocast = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        key = (_signature(x), _signature(t), _signature(cond), autocast)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._graphs[key] = self._record((x, t, cond), autocast)
        replay, static_inputs, static_out = entry
        for buffer, value in zip(static_inputs, (x, t, cond)):
            buffer.copy_(value)
        replay()
        self.replays += 1
        return static_out.clone()

    def _call_without_cast_cache(
        self, inputs: tuple[torch.Tensor, ...], autocast: tuple[bool, torch.dtype]
    ) -> torch.Tensor:
        enabled, dtype = autocast
        with torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False):
            return self.denoiser(*inputs)

    def _record(self, inputs: tuple[torch.Tensor, ...], autocast: tuple[bool, torch.dtype]):
        """Warm up on a side stream, then capture one call into a graph sharing this wrapper's memory pool."""
        static_inputs = tuple(v.clone() for v in inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup_calls):
                self._call_without_cast_cache(static_inputs, autocast)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()  # graphs replay one at a time, so they can share memory
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_out = self._call_without_cast_cache(static_inputs, autocast)
        if not isinstance(static_out, torch.Tensor):
            raise TypeError(f"The denoiser must return a tensor, got {type(static_out).__name__}.")
        return graph.replay, static_inputs, static_out
