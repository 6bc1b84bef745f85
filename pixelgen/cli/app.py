"""``pixelgen app --checkpoint DIR``: the interactive sampling page for a model folder.

Example::

    pixelgen app --checkpoint runs/demo/export              # http://127.0.0.1:7860, this machine only
    pixelgen app --checkpoint ckpt/xl --host 0.0.0.0 --port 8080
"""

from __future__ import annotations

HELP = "serve an interactive sampling page for a model folder (needs pixelgen[app]: gradio)"


def add_parser(subparsers):
    p = subparsers.add_parser("app", help=HELP, description=HELP)
    p.add_argument("--checkpoint", required=True, help="model folder (model.safetensors + config.json)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it to the network)",
    )
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="network precision (default auto: bf16 autocast on CUDA, fp32 on CPU)",
    )
    p.add_argument(
        "--text-encoder", default=None, help="text models: encoder name, folder or HF id (default: the checkpoint's)"
    )
    return p


def run(args) -> int:
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be from 0 to 65535, got {args.port}.")
    from pixelgen.utils.extras import require_extra

    require_extra("gradio", "app", feature="The web demo")
    import logging

    from pixelgen.app import DemoModel, launch

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request of the page's own polling

    demo = DemoModel(args.checkpoint, device=args.device, precision=args.precision, text_encoder=args.text_encoder)
    port = args.port
    if port == 0:
        import socket

        with socket.socket() as s:
            s.bind((args.host, 0))
            port = s.getsockname()[1]
    try:
        launch(demo, host=args.host, port=port)
    except KeyboardInterrupt:
        pass
    return 0
