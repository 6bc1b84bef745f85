"""``pixelgen ema``: post-hoc EMA of a training run.

Examples::

    pixelgen ema list runs/pixelgen_xl
    pixelgen ema reconstruct runs/pixelgen_xl --sigma-rel 0.07 --out ckpt/xl_ema0.07
    pixelgen ema reconstruct runs/pixelgen_xl --sigma-rel 0.07 --step 400000 --out ckpt/xl_400k_ema0.07
"""

from __future__ import annotations

from .common import non_negative_int

HELP = "post-hoc EMA: list a run's snapshots, or reconstruct any EMA width from them into a model folder"


def add_parser(subparsers):
    from .common import ArgumentParser

    p = subparsers.add_parser("ema", help=HELP, description=HELP)
    sub = p.add_subparsers(dest="ema_command", metavar="ACTION", required=True, parser_class=ArgumentParser)
    rec = sub.add_parser(
        "reconstruct",
        help="solve for an EMA profile from the snapshots and write model.safetensors + config.json",
        description="Least-squares combination of the run's post-hoc EMA snapshots that best matches the "
        "power-function EMA of the given relative width at the given step; written like any export.",
    )
    rec.add_argument("run", help="training run folder (with posthoc_ema/ snapshots)")
    rec.add_argument("--sigma-rel", type=float, required=True, help="relative EMA width, e.g. 0.07 (0 < w <= 0.2887)")
    rec.add_argument(
        "--step", type=non_negative_int, default=None, help="training step (default: the last complete snapshot)"
    )
    rec.add_argument("--out", required=True, help="output folder (loadable by pixelgen.load_pretrained)")
    ls = sub.add_parser("list", help="the run's complete snapshots: steps, widths and sizes")
    ls.add_argument("run", help="training run folder")
    return p


def run(args) -> int:
    from pixelgen.train.posthoc_ema import export_reconstruction, list_snapshots

    if args.ema_command == "list":
        snaps = list_snapshots(args.run)
        if not snaps:
            print(f"{args.run}: no complete snapshot yet")
            return 0
        for s in snaps:
            size = sum(f.stat().st_size for f in s.files.values())
            print(f"step {s.step:>8d}  sigma_rel {s.sigma_rel:<6g} gamma {s.gamma:7.3f}  {size / 2**20:10.2f} MiB")
        return 0
    out = export_reconstruction(args.run, args.sigma_rel, args.out, step=args.step)
    import json

    info = json.loads((out / "config.json").read_text())["posthoc_ema"]
    print(
        f"sigma_rel {info['sigma_rel']:g} (gamma {info['gamma']:.3f}) at step {info['step']} from "
        f"{len(info['snapshots'])} snapshots, profile error {info['profile_error']:.2e}: {out}"
    )
    return 0
