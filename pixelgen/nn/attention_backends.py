"""Scaled dot-product attention with selectable backends.

``backend``:

* ``"sdpa"``: :func:`torch.nn.functional.scaled_dot_product_attention` (PyTorch picks flash / memory-efficient
  / math kernels itself).
* ``"xformers"``: ``xformers.ops.memory_efficient_attention``, used only when xformers imports, the tensors are
  on CUDA in fp16/bf16, no key-padding mask is given, we are not inside ``torch.compile``, and its calls work.
  Otherwise the call falls back to SDPA and the reason is logged once (under ``torch.compile`` silently: a
  log call would split the graph). The first eligible call is the trial:
  if it raises ``NotImplementedError`` (an installed xformers without a usable operator, e.g. built for another
  torch) or another non-memory ``RuntimeError``, xformers is disabled for the rest of the process.
* ``"auto"``: xformers when usable as above, else SDPA; reasons are logged once at INFO level.
* ``"math"``: an explicit float32 ``softmax(q kᵀ/√d) v``; slow, for tests and debugging.
* ``"sdpa_flash"`` / ``"sdpa_efficient"`` / ``"sdpa_cudnn"``: SDPA with that kernel tried first and PyTorch's
  other kernels after it (``sdpa_kernel(..., set_priority=True)``), so a call the kernel cannot take (CPU,
  float32 for flash, a mask, an unsupported head size) still runs on the next one. The fastest kernel for
  a head size differs by GPU and PyTorch version; ``benchmarks/gpu_suite.py`` times each one.

Tensors are laid out (B, heads, tokens, head_dim).
"""

from __future__ import annotations

import logging
import math
from types import ModuleType

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["ATTENTION_BACKENDS", "SDPA_KERNELS", "attention", "check_backend", "xformers_status"]

log = logging.getLogger(__name__)

# backend name -> the SDPA kernel it puts first
SDPA_KERNELS = {
    "sdpa_flash": SDPBackend.FLASH_ATTENTION,
    "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
    "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
}
ATTENTION_BACKENDS = ("auto", "sdpa", "xformers", "math", *SDPA_KERNELS)
# PyTorch's usual order, used after the preferred kernel.
_SDPA_FALLBACK_ORDER = (
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.MATH,
)

_xformers_ops: ModuleType | None = None
_xformers_disabled: str | None = None  # reason xformers can never be used in this process
_logged: set[str] = set()


def check_backend(backend: str) -> str:
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention_backend must be one of {', '.join(ATTENTION_BACKENDS)}, got {backend!r}.")
    return backend


def _log_once(reason: str, requested: str, *, broken: bool = False) -> None:
    if reason in _logged:
        return
    _logged.add(reason)
    level = logging.WARNING if requested == "xformers" or broken else logging.INFO
    log.log(level, "attention: using PyTorch SDPA instead of xformers because %s.", reason)


def _load_xformers() -> ModuleType | None:
    """Import ``xformers.ops`` once; remember why it failed."""
    global _xformers_ops, _xformers_disabled
    if _xformers_ops is None and _xformers_disabled is None:
        try:
            import xformers.ops as xops

            _xformers_ops = xops
        except Exception as exc:  # ImportError, or a broken build raising anything while importing
            _xformers_disabled = f"xformers could not be imported ({type(exc).__name__}: {exc})"
    return _xformers_ops


def xformers_status() -> str:
    """``"usable"`` if xformers imported and has not failed, else the reason it is not used."""
    _load_xformers()
    return _xformers_disabled or "usable"


def _on_cuda(t: torch.Tensor) -> bool:
    return t.device.type == "cuda"


def _xformers_refusal(q: torch.Tensor, key_padding_mask: torch.Tensor | None) -> str | None:
    """Why xformers cannot take this call (None when it can)."""
    if _load_xformers() is None or _xformers_disabled is not None:
        return _xformers_disabled
    if not _on_cuda(q):
        return f"the tensors are on {q.device.type}, not CUDA"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"the tensors are {q.dtype}, not float16/bfloat16"
    if key_padding_mask is not None:
        return "a key-padding mask was given"
    return None


def _sdpa(q, k, v, dropout_p: float, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
    mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def _sdpa_preferring(
    kernel: SDPBackend, q, k, v, dropout_p: float, key_padding_mask: torch.Tensor | None
) -> torch.Tensor:
    order = [kernel, *(b for b in _SDPA_FALLBACK_ORDER if b != kernel)]
    with sdpa_kernel(order, set_priority=True):
        return _sdpa(q, k, v, dropout_p, key_padding_mask)


def _math(q, k, v, dropout_p: float, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
    scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if key_padding_mask is not None:
        scores = scores.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
    weights = F.dropout(scores.softmax(dim=-1), p=dropout_p)
    return (weights @ v.float()).to(q.dtype)


def _xformers(q, k, v, dropout_p: float) -> torch.Tensor:
    assert _xformers_ops is not None
    out = _xformers_ops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), p=dropout_p)
    return out.transpose(1, 2)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    backend: str = "auto",
    dropout_p: float = 0.0,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of ``q`` (B, heads, Nq, d) over ``k``/``v`` (B, heads, Nk, d), scale 1/√d.

    ``key_padding_mask``: optional (B, Nk) bool, True for keys that may be attended to. A query whose keys are
    all masked gets NaN (SDPA) — callers keep at least one key per row.
    """
    check_backend(backend)
    if q.ndim != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"attention expects q (B, heads, Nq, d) and k, v (B, heads, Nk, d), got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}."
        )
    if key_padding_mask is not None and (
        key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != (k.shape[0], k.shape[2])
    ):
        raise ValueError(
            f"key_padding_mask must be a bool tensor of shape ({k.shape[0]}, {k.shape[2]}), "
            f"got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}."
        )
    if backend == "math":
        return _math(q, k, v, dropout_p, key_padding_mask)
    if backend in SDPA_KERNELS:
        return _sdpa_preferring(SDPA_KERNELS[backend], q, k, v, dropout_p, key_padding_mask)
    if backend in ("auto", "xformers") and torch.compiler.is_compiling():
        # torch.compile traces SDPA, not xformers; importing or logging here would split the graph.
        return _sdpa(q, k, v, dropout_p, key_padding_mask)
    if backend in ("auto", "xformers"):
        refusal = _xformers_refusal(q, key_padding_mask)
        broken = False
        if refusal is None:
            try:
                return _xformers(q, k, v, dropout_p)
            except torch.OutOfMemoryError:
                raise
            except (NotImplementedError, RuntimeError) as exc:  # installed, but no operator for this GPU/torch build
                global _xformers_disabled
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                _xformers_disabled = f"an xformers call failed, so it is disabled for good ({first_line})"
                refusal, broken = _xformers_disabled, True
        _log_once(refusal, backend, broken=broken)
    return _sdpa(q, k, v, dropout_p, key_padding_mask)
