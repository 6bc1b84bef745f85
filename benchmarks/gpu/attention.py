"""The ``attention`` section: each SDPA kernel (and xformers) alone at the model's attention shape."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .common import Suite, _attention_inputs, _first_line, _free, _sdpa_backends, _xformers_call, bench


def section_attention(suite: Suite) -> None:
    from torch.nn.attention import sdpa_kernel

    b, heads, tokens, head_dim = suite.sizes.attention_shape
    q, k, v = _attention_inputs(suite, (b, heads, tokens, head_dim), torch.bfloat16, seed=9)
    forward_flops = 2 * 2 * b * heads * tokens * tokens * head_dim  # q·kᵀ and p·v
    runs: dict[str, Callable[[], torch.Tensor]] = {}
    for name, kernel in _sdpa_backends().items():

        def run(kernel=kernel) -> torch.Tensor:
            with sdpa_kernel([kernel]):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v)

        runs[f"sdpa {name}"] = run
    runs["xformers"] = lambda: _xformers_call(q, k, v)
    iters = 3 if suite.tiny else 20
    for name, fn in runs.items():
        try:
            fwd_ms = bench(suite, fn, warmup=2, iters=iters)
            both_ms = bench(suite, lambda fn=fn: fn().sum().backward(), warmup=2, iters=iters)
        except Exception as exc:
            suite.add_result("attention", f"attention {name}", error=_first_line(exc))
            continue
        tflops, mfu = suite.mfu(forward_flops, fwd_ms / 1e3)
        both_tflops, both_mfu = suite.mfu(3 * forward_flops, both_ms / 1e3)
        suite.add_result(
            "attention",
            f"attention {name}",
            shape=[b, heads, tokens, head_dim],
            ms=fwd_ms,
            tflops=tflops,
            mfu=mfu,
            fwd_bwd_ms=both_ms,
            fwd_bwd_tflops=both_tflops,
            fwd_bwd_mfu=both_mfu,
            flops=forward_flops,
        )
    _free()
