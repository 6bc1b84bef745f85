"""``pixelgen list [KIND] [PATTERN]``: what is registered, including parts from plugins."""

from __future__ import annotations

HELP = "list registered parts (backbones, samplers, losses, presets, encoders ...) and plugins"


def add_parser(subparsers):
    from pixelgen.registry import registries

    p = subparsers.add_parser("list", help=HELP, description=HELP)
    p.add_argument("kind", nargs="?", choices=registries.kinds(), help="registry kind (default: all)")
    p.add_argument("pattern", nargs="?", default="*", help="glob over names")
    return p


def run(args) -> int:
    from pixelgen.registry import loaded_plugins, plugin_errors, registries

    kinds = [args.kind] if args.kind else registries.kinds()
    for kind in kinds:
        reg = registries[kind]
        print(f"{kind}:")
        for entry in reg.entries(args.pattern):
            src = "" if entry.source.startswith("pixelgen") else f"  [{entry.source}]"
            print(f"  {entry.name:28s} {entry.doc}{src}")
    for name, value in loaded_plugins().items():
        print(f"plugin {name}: {value}")
    for name, err in plugin_errors().items():
        print(f"plugin {name} FAILED: {err}")
    return 0
