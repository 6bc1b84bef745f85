"""What every ``pixelgen`` subcommand shares: the error handler and exit codes, ``--set KEY=VALUE``, ``--threads``.

Exit codes: 0 success; 1 an internal error (the traceback is kept, it is a bug to report) or a run that
failed on its own terms (e.g. a diverged training); 2 a user error (bad option, missing file, missing extra:
one sentence on stderr, no traceback); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_USAGE",
    "EXIT_INTERRUPTED",
    "USER_ERRORS",
    "ArgumentParser",
    "add_common_arguments",
    "add_set_argument",
    "apply_threads",
    "available_cpus",
    "default_threads",
    "parse_assignments",
    "positive_int",
    "non_negative_int",
    "positive_float",
    "run_guarded",
    "user_message",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _user_errors() -> tuple[type[BaseException], ...]:
    from pixelgen.utils.extras import MissingExtraError

    # KeyError: unknown registry names and config keys; OSError subclasses: files that are not there or not ours.
    return (
        ValueError,
        TypeError,
        KeyError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
        MissingExtraError,
    )


USER_ERRORS = _user_errors()


def user_message(exc: BaseException) -> str:
    """The sentence of a user error (a KeyError's message without the quotes ``str(KeyError)`` adds)."""
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


# Library errors of modules that import torch, found without importing them (an error of a module can only be
# raised once it is imported): user errors (a corrupt or pickled checkpoint) and failed runs.
_LAZY_USER_ERRORS = {"pixelgen.utils.io": ("CheckpointError",)}
_LAZY_RUN_FAILURES = {
    "pixelgen.train.trainer": ("TrainingDiverged",),
    "pixelgen.utils.io": ("WriteError",),  # a full disk, a folder that cannot be written
    "pixelgen.distributed": ("RankStoppedAnswering",),
}


def _lazy(table: dict[str, tuple[str, ...]]) -> tuple[type[BaseException], ...]:
    found = []
    for module_name, names in table.items():
        module = sys.modules.get(module_name)
        found += [getattr(module, n) for n in names if module is not None and hasattr(module, n)]
    return tuple(found)


def run_guarded(prog: str, func: Callable[[], int | None], *, verbose: bool = False) -> int:
    """Run ``func`` under the one error policy of the command line (see the module docstring)."""
    try:
        return int(func() or EXIT_OK)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit:
        raise
    except BrokenPipeError:  # the reader of our output went away (``| head``): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        if isinstance(exc, USER_ERRORS + _lazy(_LAZY_USER_ERRORS)):
            if verbose:
                traceback.print_exc()
            print(f"{prog}: error: {user_message(exc)}", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(exc, _lazy(_LAZY_RUN_FAILURES)):
            if verbose:
                traceback.print_exc()
            print(f"{prog}: error: {user_message(exc)}", file=sys.stderr)
            return EXIT_FAILED
        traceback.print_exc()
        print(
            f"{prog}: internal error ({type(exc).__name__}); the traceback above is a bug to report.", file=sys.stderr
        )
        return EXIT_FAILED


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (``PROG: error: MESSAGE (see PROG --help)``), exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- option types: one sentence for a bad value ---------------------------------------------------------
def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def finite_float(text: str) -> float:
    value = _number(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


# -- --set KEY=VALUE --------------------------------------------------------------------------------------
def add_set_argument(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """``["a=1", "b.c=[1,2]"]`` → ``{"a": 1, "b.c": [1, 2]}`` with the one value syntax of config overrides."""
    from pixelgen.train.config import split_override

    out: dict[str, Any] = {}
    for item in items:
        key, value = split_override(item)
        out[key] = value
    return out


# -- threads ------------------------------------------------------------------------------------------------
def _cgroup_cpu_limit(path: str = "/sys/fs/cgroup/cpu.max") -> int | None:
    """The CPU quota of this cgroup (v2 ``cpu.max``: ``QUOTA PERIOD`` or ``max PERIOD``), rounded up; None if none."""
    try:
        quota, period = Path(path).read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    if q <= 0 or p <= 0:
        return None
    return max(1, -(-q // p))


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by the cgroup CPU quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return max(1, min(count, limit) if limit else count)


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when set (the user's explicit choice), else the CPUs this process may use, shared
    among the processes torchrun started on this machine (``LOCAL_WORLD_SIZE``)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    local = os.environ.get("LOCAL_WORLD_SIZE", "").strip()
    share = int(local) if local.isdigit() and int(local) >= 1 else 1
    return max(1, available_cpus() // share)


def apply_threads(threads: int | None) -> int:
    """``torch.set_num_threads`` with ``threads`` (default: :func:`default_threads`); returns the count used."""
    import torch

    count = default_threads() if threads is None else int(threads)
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def add_sampler_step_arguments(parser: argparse.ArgumentParser) -> None:
    """The sampler options shared by the commands that sample: steps, time shift, Heun and Adams variants."""
    parser.add_argument("--steps", type=positive_int, help="number of steps (default 50)")
    parser.add_argument("--shift", type=positive_float, help="time-grid shift (default: the preset's, else 1.0)")
    parser.add_argument(
        "--lazy-heun", action="store_true", help="Heun reusing the corrector velocity (exact_henu=False)"
    )
    parser.add_argument("--order", type=positive_int, help="Adams order (adams sampler only)")
    parser.add_argument(
        "--exact-final-step", action="store_true", help="land on x̂ at t=1 instead of the default clamped last step"
    )


def apply_sampler_step_arguments(
    args: argparse.Namespace, sampler: str, params: dict[str, Any], **more: Any
) -> dict[str, Any]:
    """``params`` updated in place with the options of :func:`add_sampler_step_arguments` (and ``more``) that were
    given; a Heun-only setting is refused for another sampler and dropped from its parameters."""
    explicit = {
        "num_steps": args.steps,
        **more,
        "timeshift": args.shift,
        "order": args.order,
        "exact_henu": False if args.lazy_heun else None,
        "exact_final_step": True if args.exact_final_step else None,
    }
    params.update({k: v for k, v in explicit.items() if v is not None})
    if sampler != "heun":
        if args.lazy_heun:
            raise ValueError("--lazy-heun applies to the heun sampler only.")
        params.pop("exact_henu", None)
    return params


def add_metric_network_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the commands that score samples find their feature networks and cached reference statistics."""
    parser.add_argument(
        "--inception-weights",
        default=None,
        help="TF-compatible Inception weights file (torch-fidelity's weights-inception-2015-12-05-6726825d.pth); "
        "'random' for a smoke test (meaningless numbers, said in every file)",
    )
    parser.add_argument(
        "--dinov2-weights",
        default=None,
        help="DINOv2 weights for fd_dinov2 (default: resolved offline-first); 'random' for a smoke test (meaningless)",
    )
    parser.add_argument(
        "--cache-dir", default=None, help="where reference statistics are cached (default: ~/.cache/pixelgen/eval)"
    )


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of every subcommand (added by :func:`pixelgen.cli.main`, so a new command gets them too)."""
    group = parser.add_argument_group("common options")
    group.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads for torch (default: OMP_NUM_THREADS, else the CPUs this process may use: "
        "affinity and cgroup quota)",
    )
    group.add_argument("-v", "--verbose", action="store_true", help="debug logging; tracebacks for errors")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
