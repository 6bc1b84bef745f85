"""The ``env`` section: versions, the GPU, which SDPA kernels run, xformers' state, the card's matrix rate."""

from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import torch

from pixelgen.nn import xformers_status

from .common import Suite, _attention_inputs, _first_line, _sdpa_backends, _xformers_call, bench, log


def section_env(suite: Suite) -> None:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(suite.device),
        "cpu_threads": torch.get_num_threads(),
    }
    if suite.cuda:
        props = torch.cuda.get_device_properties(suite.device)
        env.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 2),
        )
        env["nvidia_smi"] = _run_text(
            ["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit", "--format=csv"]
        )
    for name in ("triton", "timm", "lpips", "xformers"):
        try:
            env[f"{name}_version"] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception as exc:  # a broken build can raise anything on import
            env[f"{name}_version"] = f"not importable ({_first_line(exc)})"
    env["sdpa_kernels"] = sdpa_kernel_status(suite)
    env["xformers"] = xformers_report(suite)
    env["matmul_bf16_tflops"] = measure_matmul(suite)
    suite.report["env"] = env
    for key in ("torch", "cuda", "cudnn", "gpu", "matmul_bf16_tflops"):
        log(f"  {key}: {env.get(key)}")
    log(f"  SDPA kernels at the XL shape: {env['sdpa_kernels']}")
    log(f"  xformers: {env['xformers']['status']}")


def _run_text(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        return (done.stdout + done.stderr).strip()
    except Exception as exc:
        return f"could not run {' '.join(cmd)}: {_first_line(exc)}"


def sdpa_kernel_status(suite: Suite) -> dict[str, str]:
    """Whether each SDPA kernel takes a bf16 call (forward and backward) at the model's attention shape."""
    from torch.nn.attention import sdpa_kernel

    _, heads, tokens, head_dim = suite.sizes.attention_shape
    status = {}
    for name, kernel in _sdpa_backends().items():
        q, k, v = _attention_inputs(suite, (1, heads, tokens, head_dim), torch.bfloat16)
        try:
            with sdpa_kernel([kernel]):
                torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()
            suite.sync()
            status[name] = "ok"
        except Exception as exc:
            status[name] = _first_line(exc)
    return status


CUDA12_RUNTIME_ENV = "PIXELGEN_CUDA12_RUNTIME_DIR"
"""Set by run_gpu_suite.sh to the folder holding a carried libcudart.so.12 (it is then on LD_LIBRARY_PATH)."""

_XFORMERS_PROBE = (
    "import torch, xformers.ops as x; q = torch.randn(1, 288, 16, 72, device='cuda', dtype=torch.bfloat16); "
    "x.memory_efficient_attention(q, q, q); print('memory_efficient_attention works')"
)


def xformers_report(suite: Suite) -> dict[str, Any]:
    """Why xformers' memory_efficient_attention does or does not run here: import, the C++ extension's load
    error (and the dynamic loader's own message), a real call, ``python -m xformers.info``, and, when a CUDA-12
    runtime was carried, the same call in a process without it."""
    report: dict[str, Any] = {"pixelgen_backend": xformers_status()}
    try:
        import xformers
        import xformers.ops  # noqa: F401
    except Exception as exc:
        report["status"] = f"not importable: {_first_line(exc)}"
        return report
    report["version"] = getattr(xformers, "__version__", "?")
    cpp = getattr(xformers, "_cpp_lib", None)
    load_error = getattr(cpp, "_cpp_library_load_exception", None)
    report["extension_loaded"] = None if cpp is None else load_error is None
    report["built_with_cuda"] = getattr(cpp, "_built_with_cuda", None)
    if load_error is not None:
        report["extension_error"] = str(load_error).strip()
        report["extension_dlopen_error"] = _dlopen_error(Path(xformers.__file__).parent / "_C.so")
    build_file = Path(xformers.__file__).parent / "cpp_lib.json"
    if build_file.exists():
        report["built_for"] = json.loads(build_file.read_text()).get("version")
    _, heads, tokens, head_dim = suite.sizes.attention_shape
    try:
        q, k, v = _attention_inputs(suite, (1, heads, tokens, head_dim), torch.bfloat16)
        _xformers_call(q, k, v).sum().backward()
        suite.sync()
        report["status"] = "memory_efficient_attention works (forward and backward)"
    except Exception as exc:
        report["status"] = f"memory_efficient_attention failed: {_first_line(exc)}"
        report["error"] = "".join(traceback.format_exception_only(type(exc), exc))[-4000:]
    info = _run_text([sys.executable, "-m", "xformers.info"], env={**os.environ, "XFORMERS_MORE_DETAILS": "1"})
    report["info_head"] = info.splitlines()[:40]
    runtime_dir = os.environ.get(CUDA12_RUNTIME_ENV)
    if runtime_dir and suite.cuda:
        paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p and p != runtime_dir]
        env = {**os.environ, "LD_LIBRARY_PATH": ":".join(paths)}
        report["without_cuda12_runtime"] = _run_text([sys.executable, "-c", _XFORMERS_PROBE], env=env).splitlines()[-3:]
    if suite.out is not None:
        suite.out.mkdir(parents=True, exist_ok=True)
        details = json.dumps({k: v for k, v in report.items() if k != "info_head"}, indent=1, default=str)
        (suite.out / "xformers_info.txt").write_text(info + "\n\n-- suite's findings --\n" + details + "\n")
        report["info_file"] = "xformers_info.txt"
    return report


def _dlopen_error(library: Path) -> str | None:
    """The dynamic loader's message for ``library`` (e.g. a missing libcudart.so.12), or None if it loads."""
    import ctypes

    if not library.exists():
        return f"{library.name} is not in the installed package"
    try:
        ctypes.CDLL(str(library))
        return None
    except OSError as exc:
        return str(exc)


def measure_matmul(suite: Suite) -> float | None:
    """bf16 TFLOP/s of a square product on random data (a check of the card against its 798 TFLOP/s)."""
    if not suite.cuda:
        return None
    n = suite.sizes.matmul_side
    a, b = (torch.randn(n, n, device=suite.device, dtype=torch.bfloat16) for _ in range(2))
    ms = bench(suite, lambda: a @ b, warmup=3, iters=10)
    return round(2 * n**3 / (ms / 1e3) / 1e12, 1)
