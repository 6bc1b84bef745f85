"""Forward-pass time and peak memory of JiT backbones on CPU (batch 1, eval mode, float32).

    python benchmarks/forward_cpu.py                      # pixelgen_xl_16 at 256 px and a tiny config
    python benchmarks/forward_cpu.py --models tiny pixelgen_l_16 --repeats 5 --threads 2

Each model runs in its own fresh process, so the peak-memory figures do not mix. Memory is the process's
resident set size (RSS) read from the OS: ``getrusage(RUSAGE_SELF).ru_maxrss`` for the peak and
``/proc/self/statm`` for the current value. "forward peak" is the highest RSS reached during the forward
passes minus the RSS just before them (weights and the Python/torch runtime excluded).

"kernels" and "written MiB" count, in one more untimed forward, the ATen operations that write memory (views
excluded; a composite such as ``linear`` or ``rms_norm`` once, as dispatched) and the bytes they write: about
what an eager GPU forward launches and writes, a figure that a shared CPU cannot blur. Prints a table.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import time

TINY = dict(
    input_size=32,
    patch_size=8,
    hidden_size=64,
    depth=4,
    num_heads=4,
    num_classes=10,
    bottleneck_dim=16,
    in_context_len=4,
    in_context_start=1,
)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _count_kernels(forward) -> tuple[int, float]:
    """(ATen operations that write memory, MiB they write) during ``forward()``, counted as dispatched: a
    composite such as ``linear`` or ``rms_norm`` counts once, as the one kernel it is on a GPU."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        kernels, written = 0, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            view = any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)
            outs = [o for o in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(o, torch.Tensor)]
            # Views and operations that hand back an input (dropout in eval mode) write nothing.
            if not view and not any(o is a for o in outs for a in args):
                self.kernels += 1
                self.written += sum(o.numel() * o.element_size() for o in outs)
            return out

    with Counter() as counter:
        forward()
    return counter.kernels, counter.written / 2**20


def _measure(name: str, repeats: int, threads: int, queue) -> None:
    import torch

    from pixelgen import build_model

    torch.set_num_threads(threads)
    start = time.perf_counter()
    model = (build_model("jit", **TINY) if name == "tiny" else build_model(name)).eval()
    build_s = time.perf_counter() - start
    size = model.input_size
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, model.in_channels, size, size, generator=gen)
    t = torch.full((1,), 0.5)
    y = torch.tensor([1])
    rss_before = _rss_mib()
    peak_before = _peak_rss_mib()
    times = []
    with torch.inference_mode():
        model(x, t, y)  # warm-up: first-call allocations and kernel selection
        for _ in range(repeats):
            start = time.perf_counter()
            model(x, t, y)
            times.append(time.perf_counter() - start)
    peak = _peak_rss_mib()
    with torch.inference_mode():
        kernels, written = _count_kernels(lambda: model(x, t, y))
    queue.put(
        dict(
            name=name,
            size=size,
            params=sum(p.numel() for p in model.parameters()),
            build_s=build_s,
            median_s=statistics.median(times),
            min_s=min(times),
            rss_weights=rss_before,
            forward_peak=max(0.0, peak - rss_before),
            peak=max(peak, peak_before),
            kernels=kernels,
            written=written,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models", nargs="+", default=["tiny", "pixelgen_xl_16"], help="'tiny' or registered backbone names"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed forward passes after one warm-up")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads")
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    rows = []
    for name in args.models:
        print(f"measuring {name} ({args.repeats} timed forward passes, {args.threads} threads) ...", flush=True)
        queue = ctx.Queue()
        proc = ctx.Process(target=_measure, args=(name, args.repeats, args.threads, queue))
        proc.start()
        rows.append(queue.get())
        proc.join()

    header = (
        f"{'model':16s} {'px':>4s} {'params':>9s} {'build s':>8s} {'fwd median s':>12s} {'fwd min s':>9s} "
        f"{'RSS weights MiB':>15s} {'fwd peak +MiB':>13s} {'peak RSS MiB':>12s} {'kernels':>7s} {'written MiB':>11s}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['name']:16s} {r['size']:4d} {r['params'] / 1e6:8.2f}M {r['build_s']:8.2f} {r['median_s']:12.4f} "
            f"{r['min_s']:9.4f} {r['rss_weights']:15.0f} {r['forward_peak']:13.0f} {r['peak']:12.0f} "
            f"{r['kernels']:7d} {r['written']:11.1f}"
        )


if __name__ == "__main__":
    main()
