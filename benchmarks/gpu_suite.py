"""The GPU suite in one command: environment, correctness, then timings of training, sampling and attention.

    PYTHONUNBUFFERED=1 python benchmarks/gpu_suite.py --out $OUT            # everything, PixelGen-XL/16 sizes
    python benchmarks/gpu_suite.py --sections env,attention                 # a subset
    python benchmarks/gpu_suite.py --tiny                                   # same code paths, tiny sizes (auto on CPU)
    benchmarks/run_gpu_suite.sh                                             # installs the wheels in .whl/ first

Sections (run in this order; ``--sections`` picks a subset):

* ``env``: torch / CUDA / cuDNN versions, GPU, which SDPA kernels run at the XL attention shape, xformers
  (import, a real call, ``python -m xformers.info`` with ``XFORMERS_MORE_DETAILS=1`` saved to
  ``xformers_info.txt``), and a bf16 8192³ matrix product as a check of the card's matrix rate.
* ``correctness``: loss terms under bf16 autocast vs float32 (also with the frozen networks in bf16 and
  LPIPS channels-last), Heun-50 sampler images under bf16 vs float32 (both guidance settings), attention
  kernels against a float64 reference (outputs and gradients). Float32 references run with TF32 off.
* ``attention``: each SDPA kernel (and xformers when it works) alone at the XL shape (batch 32, 16 heads,
  288 tokens, head dim 72), forward and forward+backward.
* ``sample``: 50-step exact Heun, shift 2, batch 64, without guidance and with guidance
  2.25 on (0.1, 0.9]: eager, CUDA graphs (``GraphedDenoiser``), compiled, compiled + CUDA graphs; images of
  each variant are compared with the eager ones.
* ``train``: one optimiser step of PixelGen-XL/16 at batch 32, 256 px, bf16 autocast: the full objective (FM +
  REPA + LPIPS + P-DINO with noise gating), FM + REPA only, and the full objective with the frozen networks
  in bf16 and LPIPS channels-last; fused AdamW, foreach EMA, the trainer's one host sync per step; eager and
  ``torch.compile`` (``--compile``; the variant with compiled frozen networks comes last).

Every throughput comes with the model FLOPs (``pixelgen.utils.flops``: multiply-add = 2 FLOPs, matrix
products only, no recomputation), the achieved TFLOP/s and the model FLOP utilisation against the card's
bf16 dense peak (798 TFLOP/s measured on an H100 80GB HBM3; ``--peak-tflops``), next to the original's
figures. Frozen networks use random weights (no network access); the backbone's zero-initialised layers
are re-drawn (std 0.02) so that its outputs depend on its inputs. Results go to ``--out`` (default
``$OUT``): ``suite.json``, ``suite.md``, ``profiles.txt`` (kernel-time tables of one full training step and
one guided sampling call, eager and compiled), ``xformers_info.txt``. Each section prints its elapsed time;
sections or variants that would start after ``--budget-s`` seconds are skipped and listed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.gpu.attention import section_attention  # noqa: E402
from benchmarks.gpu.common import (  # noqa: E402
    FULL,
    H100_BF16_PEAK_TFLOPS,
    ORIGINAL,
    PERTURB_STD,
    SECTIONS,
    TARGETS,
    TINY,
    Sizes,
    Suite,
    _first_line,
    log,
)
from benchmarks.gpu.correctness import section_correctness  # noqa: E402
from benchmarks.gpu.env import section_env  # noqa: E402
from benchmarks.gpu.report import print_table  # noqa: E402
from benchmarks.gpu.sampling import section_sample  # noqa: E402
from benchmarks.gpu.training import section_train  # noqa: E402
from pixelgen.nn import ATTENTION_BACKENDS, xformers_status  # noqa: E402

__all__ = ["FULL", "TINY", "SECTIONS", "Sizes", "Suite", "main", "parse_args"]


# -- main -----------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--out", default=os.environ.get("OUT") or None, help="folder for suite.json / suite.md (default $OUT)"
    )
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (automatic without CUDA)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument(
        "--compile",
        choices=("off", "on", "both"),
        default=None,
        help="torch.compile variants (default: both on CUDA, off elsewhere)",
    )
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (tests use 'eager')")
    p.add_argument(
        "--attention-backend", default="auto", choices=ATTENTION_BACKENDS, help="the backbone's attention_backend"
    )
    p.add_argument(
        "--no-compile-encoders",
        dest="compile_encoders",
        action="store_false",
        help="skip the variant with compiled frozen networks",
    )
    p.add_argument(
        "--sample-variants",
        default="",
        help="subset of eager,cudagraphs,compiled,compiled+cudagraphs (default: all that --compile allows)",
    )
    p.add_argument("--steps", type=int, default=None, help="timed training steps per variant (default 16; tiny 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed training steps first (default 3; tiny 1)")
    p.add_argument("--sample-repeats", type=int, default=1, help="timed sampling runs per variant")
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="bf16 dense peak for MFU (default 798 on an H100/H200)"
    )
    p.add_argument("--budget-s", type=float, default=420.0, help="do not start a variant after this many seconds")
    p.add_argument(
        "--no-profile", dest="profile", action="store_false", help="skip the kernel-time tables (profiles.txt)"
    )
    args = p.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tiny = args.tiny or device.type != "cuda"
    sizes = TINY if tiny else FULL
    args.compile = args.compile or ("both" if device.type == "cuda" else "off")
    args.steps = args.steps if args.steps is not None else (2 if tiny else 16)
    args.warmup = args.warmup if args.warmup is not None else (1 if tiny else 3)
    args.sample_variants = {v.strip() for v in args.sample_variants.split(",") if v.strip()}
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak = args.peak_tflops
    if peak is None and any(chip in device_name for chip in ("H100", "H200")):
        peak = H100_BF16_PEAK_TFLOPS
    suite = Suite(args, device, sizes, Path(args.out) if args.out else None, peak)
    if suite.out is not None:
        (suite.out / "profiles.txt").unlink(missing_ok=True)  # appended to during the run
    suite.report.update(
        meta={
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device_name": device_name,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "sizes": "tiny" if tiny else "PixelGen-XL/16, 256 px",
            "tiny": tiny,
            "peak_tflops": peak,
            "compile": args.compile,
            "compile_backend": args.compile_backend,
            "attention_backend": args.attention_backend,
            "argv": sys.argv[1:] if argv is None else argv,
            "weights_note": "Frozen networks (DINOv2, LPIPS) use random weights (no network access); the backbone is randomly "
            f"initialised with its zero-initialised layers re-drawn (std {PERTURB_STD}).",
            "flops_note": "model FLOPs from the shapes (pixelgen.utils.flops): multiply-add = 2 FLOPs, matrix products only, "
            "no recomputation; training: LPIPS on the expected gated share (P(t>=0.3)=0.524), P-DINO on the batch.",
            "original": ORIGINAL,
            "targets": TARGETS,
        },
        results=[],
        skipped=[],
        elapsed_s={},
    )
    log(
        f"GPU suite on {device_name} ({suite.report['meta']['sizes']}); frozen networks: random weights; budget {args.budget_s:.0f} s"
    )
    runners = {
        "env": section_env,
        "correctness": section_correctness,
        "attention": section_attention,
        "train": section_train,
        "sample": section_sample,
    }
    chosen = [s for s in SECTIONS if s in args.sections.split(",")]
    for name in chosen:
        if not suite.within_budget(f"section {name}"):
            continue
        log(f"[{name}] starting at {suite.elapsed():.0f} s")
        t0 = time.perf_counter()
        try:
            runners[name](suite)
        except Exception as exc:  # one broken section must not cost the others
            suite.report.setdefault("errors", {})[name] = traceback.format_exc()[-4000:]
            log(f"[{name}] failed: {_first_line(exc)}")
        suite.report["elapsed_s"][name] = round(time.perf_counter() - t0, 2)
        log(f"[{name}] done in {suite.report['elapsed_s'][name]:.1f} s (total {suite.elapsed():.0f} s)")
        suite.save()
    suite.report["meta"]["xformers_after_run"] = xformers_status()  # "usable" if "auto" could have picked it
    print_table(suite.report)
    suite.save()
    if suite.out is not None:
        log(f"wrote {suite.out / 'suite.json'} and {suite.out / 'suite.md'}")
    return suite.report


if __name__ == "__main__":
    main()
