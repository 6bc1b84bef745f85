"""The ``pixelgen`` command: one package, one module per subcommand, one error handler.

A subcommand is a module here (named so that it shadows no builtin: ``listing`` for ``list``) that defines ``HELP`` (one line), ``add_parser(subparsers) -> parser`` (which
calls ``subparsers.add_parser(NAME, help=HELP, ...)`` and adds its options) and ``run(args) -> int``; it is
listed once in :data:`COMMANDS`. :func:`main` adds the common options (``--threads``, ``-v``) to every
subcommand, applies the thread count, and runs the command under :func:`pixelgen.cli.common.run_guarded`
(exit codes: 0 ok, 1 internal error or failed run, 2 user error, 130 interrupted). Modules keep their heavy
imports inside ``run``, so ``pixelgen --help`` stays fast, and only the chosen command's options are built.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .common import (
    EXIT_OK,
    EXIT_USAGE,
    ArgumentParser,
    add_common_arguments,
    apply_threads,
    run_guarded,
    setup_logging,
)

__all__ = ["COMMANDS", "build_parser", "main"]

# subcommand -> module implementing it (the one list)
COMMANDS: dict[str, str] = {
    "train": "pixelgen.cli.train",
    "sample": "pixelgen.cli.sample",
    "eval": "pixelgen.cli.evaluate",
    "generate": "pixelgen.cli.generate",
    "convert": "pixelgen.cli.convert",
    "list": "pixelgen.cli.listing",
    "ema": "pixelgen.cli.ema",
    "sweep": "pixelgen.cli.sweep",
    "app": "pixelgen.cli.app",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``pixelgen`` parser; with ``only``, the options of that subcommand alone are built."""
    parser = ArgumentParser(prog="pixelgen", description="PixelGen: pixel-space diffusion with perceptual losses.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        if only is not None and name != only:
            sub.add_parser(name, help=module.HELP, add_help=False)
            continue
        command = module.add_parser(sub)
        add_common_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=chosen if chosen in COMMANDS else None)
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return EXIT_OK if chosen is None else EXIT_USAGE
    setup_logging(args.verbose)
    prog = f"pixelgen {args.command}"

    def work() -> int:
        apply_threads(args.threads)
        return args._run(args)

    return run_guarded(prog, work, verbose=args.verbose)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
