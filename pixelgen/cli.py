"""The ``pixelgen`` command.

Each sub-command lives in its own module, which defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their command runs (or for ``--help``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# command -> module implementing it
COMMANDS: dict[str, str] = {
    "list": "pixelgen.cli_list",
    "convert": "pixelgen.checkpoint_cli",
    "sample": "pixelgen.eval.sample_cli",
    "eval": "pixelgen.eval.metrics_cli",
    "generate": "pixelgen.conditioners.generate_cli",
    "ema": "pixelgen.ema_cli",
    "sweep": "pixelgen.sweep_cli",
    "app": "pixelgen.app.cli",
}


def _load(name: str):
    return importlib.import_module(COMMANDS[name])


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixelgen", description="PixelGen: pixel diffusion with perceptual losses.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        if only is not None and name != only:
            sub.add_parser(name, help=f"(see pixelgen {name} --help)", add_help=False)
            continue
        try:
            mod = _load(name)
        except ImportError as exc:  # a command whose module is missing stays listed, and says why
            sub.add_parser(name, help=f"unavailable: {exc}")
            continue
        p = sub.add_parser(name, help=getattr(mod, "HELP", ""), description=getattr(mod, "HELP", ""))
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0 if command is None else 2
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError, TypeError) as exc:
        # One clear sentence instead of a traceback; --verbose keeps the traceback.
        if args.verbose:
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"pixelgen {args.command}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
