"""The gradio page over :class:`~pixelgen.app.engine.DemoModel`.

One sampling runs at a time (the model is shared); other requests wait in gradio's queue and show their place.
A setting that cannot be used, or a failure while sampling, shows one sentence on the page; the traceback goes to
the server's log only and the server keeps serving.
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from .engine import (
    FRAME_SIDE,
    DemoInputError,
    DemoModel,
    DemoResult,
    DemoSettings,
    default_settings,
    save_outputs,
    tile,
)

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine

__all__ = ["build_app", "launch"]

log = logging.getLogger("pixelgen.app")

KEEP_RESULTS = 64  # result folders kept on disk (older ones are deleted)

CSS = """
#status-error { color: #b91c1c; font-weight: 600; }
#images img, #trajectory img, #trajectory-gif img, #a-images img, #b-images img { image-rendering: pixelated; }
.pg-command textarea { font-family: ui-monospace, monospace; font-size: 0.85em; }
"""


def _import_gradio():
    from ..utils.extras import require_extra

    return require_extra("gradio", "app", feature="The web demo")


class _Results:
    """Per-request output folders under one temporary root, the oldest deleted beyond KEEP_RESULTS."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pixelgen-app-"))
        self._folders: collections.deque[Path] = collections.deque()
        self._count = 0
        self._lock = threading.Lock()

    def new(self) -> Path:
        with self._lock:
            self._count += 1
            folder = self.root / f"{self._count:06d}"
            self._folders.append(folder)
            while len(self._folders) > KEEP_RESULTS:
                shutil.rmtree(self._folders.popleft(), ignore_errors=True)
        return folder

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _message(exc: BaseException) -> str:
    """One readable sentence for the page."""
    if isinstance(exc, DemoInputError):
        return str(exc)
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    text = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"Sampling failed: {text}"


def _error_html(text: str) -> str:
    import html

    return f'<div id="status-error" role="alert">⚠ {html.escape(text)}</div>'


def _ok_html(text: str) -> str:
    import html

    return f'<div id="status-ok">✓ {html.escape(text)}</div>'


def build_app(demo_model: DemoModel, *, title: str = "pixelgen"):
    """The gradio ``Blocks`` page for ``demo_model`` (not launched). The page's result folders live under
    ``blocks.pixelgen_results.root``."""
    gr = _import_gradio()
    from pixelgen.samplers import list_samplers

    results = _Results()
    defaults = default_settings(demo_model.kind)
    samplers = list_samplers()
    text = demo_model.kind == "text"

    def sampler_inputs(prefix: str, d: DemoSettings, label: str = ""):
        """Sampler, steps, guidance, interval, shift and Adams order, with elem_ids ``{prefix}-...``."""
        with gr.Group():
            if label:
                gr.Markdown(f"**{label}**")
            sampler = gr.Dropdown(samplers, value=d.sampler, label="Sampler", elem_id=f"{prefix}-sampler")
            with gr.Row():
                steps = gr.Number(d.steps, label="Steps", elem_id=f"{prefix}-steps", minimum=None)
                guidance = gr.Number(d.guidance, label="Guidance scale", elem_id=f"{prefix}-guidance")
            with gr.Row():
                interval_min = gr.Number(d.interval_min, label="Guidance from t >", elem_id=f"{prefix}-imin")
                interval_max = gr.Number(d.interval_max, label="… to t ≤", elem_id=f"{prefix}-imax")
            with gr.Row():
                shift = gr.Number(d.shift, label="Time shift", elem_id=f"{prefix}-shift")
                order = gr.Number(d.order, label="Adams order (adams only)", elem_id=f"{prefix}-order")
        return [sampler, steps, guidance, interval_min, interval_max, shift, order]

    def settings_from(condition: list[Any], shared: list[Any], knobs: list[Any]) -> DemoSettings:
        sampler, steps, guidance, interval_min, interval_max, shift, order = knobs
        seed, num_images, resolution = shared
        s = DemoSettings(
            sampler=sampler,
            steps=steps,
            guidance=guidance,
            interval_min=interval_min,
            interval_max=interval_max,
            shift=shift,
            order=order,
            seed=seed,
            num_images=num_images,
            resolution=resolution,
        )
        if text:
            s.prompt, s.negative_prompt = condition
        else:
            s.class_label = condition[0]
        return s

    def sample(
        settings: DemoSettings, progress: Any, share: tuple[float, float] = (0.0, 1.0)
    ) -> tuple[DemoResult, dict]:
        lo, width = share

        def report(step: int, steps: int) -> None:
            progress(lo + width * step / steps, desc=f"sampling: step {step} of {steps}")

        result = demo_model.run(settings, on_progress=report)
        files = save_outputs(result, results.new())
        return result, files

    def gallery_items(result: DemoResult, files: dict) -> list[tuple[str, str]]:
        return [(str(p), c) for p, c in zip(files["pngs"], result.captions)]

    def strip_items(result: DemoResult, folder: Path) -> list[tuple[str, str]]:
        from PIL import Image

        items = []
        for n, (t, frame) in enumerate(result.strip()):
            path = folder / f"trajectory_{n:02d}.png"
            Image.fromarray(tile(frame, min_side=FRAME_SIDE)).save(path)
            items.append((str(path), f"x̂ at t = {t:.2f}"))
        return items

    progress_tracker = gr.Progress()  # gradio hands each request its own tracker in its place

    def on_generate(data: dict, progress=progress_tracker):
        try:
            settings = settings_from([data[c] for c in condition], [data[c] for c in shared], [data[c] for c in knobs])
            result, files = sample(settings, progress)
            strip = strip_items(result, files["zip"].parent)
        except Exception as exc:  # noqa: BLE001 - the page shows one sentence, the log keeps the traceback
            if not isinstance(exc, DemoInputError):
                log.exception("sampling failed")
            return _error_html(_message(exc)), None, None, None, "", "", None
        return (
            _ok_html(f"{result.images.shape[0]} image(s) · seed {result.settings.seed}"),
            gallery_items(result, files),
            strip,
            str(files["gif"]),
            result.stats_line(),
            result.command,
            str(files["zip"]),
        )

    def on_compare(data: dict, progress=progress_tracker):
        outputs = []
        try:
            both = [
                settings_from([data[c] for c in condition], [data[c] for c in shared], [data[c] for c in side])
                for side in (knobs_a, knobs_b)
            ]
            for settings in both:  # both checked before either samples
                demo_model.check(settings)
            for k, settings in enumerate(both):
                result, files = sample(settings, progress, share=(0.5 * k, 0.5))
                outputs += [gallery_items(result, files), result.stats_line(), result.command]
        except Exception as exc:  # noqa: BLE001
            if not isinstance(exc, DemoInputError):
                log.exception("sampling failed")
            return _error_html(_message(exc)), None, "", "", None, "", ""
        return (_ok_html("same seed, two settings"), *outputs)

    with gr.Blocks(title=title, delete_cache=(3600, 3600)) as blocks:
        gr.Markdown(f"# {title}\n{demo_model.describe()}", elem_id="model-info")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                if text:
                    prompt = gr.Textbox(defaults.prompt, label="Prompt", lines=2, elem_id="prompt")
                    negative = gr.Textbox(
                        defaults.negative_prompt, label="Negative prompt", lines=1, elem_id="negative-prompt"
                    )
                    condition = [prompt, negative]
                else:
                    choices = demo_model.class_choices()
                    condition = [
                        gr.Dropdown(choices, value=choices[0][1], label="Class", elem_id="class", filterable=True)
                    ]
                with gr.Row():
                    seed = gr.Number(defaults.seed, label="Seed", elem_id="seed")
                    num_images = gr.Number(defaults.num_images, label="Images", elem_id="num-images")
                    resolution = gr.Number(
                        demo_model.input_size,
                        label=f"Resolution (multiple of {demo_model.patch_size})",
                        elem_id="resolution",
                    )
                shared = [seed, num_images, resolution]
            with gr.Column(scale=3):
                status = gr.HTML("", elem_id="status")
                with gr.Tabs():
                    with gr.Tab("Sample", elem_id="tab-sample"):
                        with gr.Row():
                            with gr.Column(scale=1, min_width=280):
                                knobs = sampler_inputs("s", defaults)
                                run = gr.Button("Generate", variant="primary", elem_id="generate")
                            with gr.Column(scale=2):
                                images = gr.Gallery(
                                    label="Images",
                                    format="png",
                                    columns=4,
                                    height=300,
                                    object_fit="contain",
                                    elem_id="images",
                                )
                                stats = gr.Textbox(label="Cost", interactive=False, elem_id="stats")
                                strip = gr.Gallery(
                                    label="Trajectory: x̂ along the way",
                                    format="png",
                                    columns=6,
                                    height=220,
                                    object_fit="contain",
                                    elem_id="trajectory",
                                )
                                gif = gr.Image(
                                    label="Trajectory (animated)", type="filepath", elem_id="trajectory-gif", height=240
                                )
                                command = gr.Textbox(
                                    label="Reproduce with",
                                    interactive=False,
                                    lines=2,
                                    buttons=["copy"],
                                    elem_id="command",
                                    elem_classes=["pg-command"],
                                )
                                download = gr.File(label="Download (PNGs, GIF, settings)", elem_id="download")
                    with gr.Tab("Compare samplers", elem_id="tab-compare"):
                        gr.Markdown("Same condition, seed, images and resolution; two sampler settings side by side.")
                        sides = (("a", defaults), ("b", _other(defaults)))
                        side_knobs = []
                        with gr.Row():
                            for side, d in sides:
                                with gr.Column():
                                    side_knobs.append(sampler_inputs(side, d, label=f"Setting {side.upper()}"))
                        compare = gr.Button("Compare", variant="primary", elem_id="compare")
                        side_outputs = []
                        with gr.Row():
                            for side, _ in sides:
                                with gr.Column():
                                    side_outputs += [
                                        gr.Gallery(
                                            label=f"Setting {side.upper()}",
                                            format="png",
                                            columns=4,
                                            height=300,
                                            object_fit="contain",
                                            elem_id=f"{side}-images",
                                        ),
                                        gr.Textbox(label="Cost", interactive=False, elem_id=f"{side}-stats"),
                                        gr.Textbox(
                                            label="Reproduce with",
                                            interactive=False,
                                            lines=2,
                                            buttons=["copy"],
                                            elem_id=f"{side}-command",
                                            elem_classes=["pg-command"],
                                        ),
                                    ]
        knobs_a, knobs_b = side_knobs
        run.click(
            on_generate,
            inputs={*condition, *shared, *knobs},
            outputs=[status, images, strip, gif, stats, command, download],
            concurrency_limit=1,
            concurrency_id="sampling",
        )
        a_images, a_stats, a_command, b_images, b_stats, b_command = side_outputs
        compare.click(
            on_compare,
            inputs={*condition, *shared, *knobs_a, *knobs_b},
            outputs=[status, a_images, a_stats, a_command, b_images, b_stats, b_command],
            concurrency_limit=1,
            concurrency_id="sampling",
        )
    blocks.pixelgen_results = results
    return blocks


def _other(d: DemoSettings) -> DemoSettings:
    """Setting B of the comparison: Euler with the same steps, guidance and shift."""
    other = DemoSettings(**{**d.__dict__})
    other.sampler = "euler" if d.sampler != "euler" else "heun"
    return other


def launch(
    demo_model: DemoModel,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    block: bool = True,
    quiet: bool = False,
):
    """Serve the page on ``host:port`` (loopback by default). ``block=False`` returns the running ``Blocks``."""
    blocks = build_app(demo_model)
    blocks.queue(max_size=64)
    try:
        blocks.launch(
            server_name=host,
            server_port=port,
            share=False,
            prevent_thread_lock=True,
            quiet=True,
            show_error=False,
            allowed_paths=[str(blocks.pixelgen_results.root)],
            footer_links=[],
            css=CSS,
        )
    except OSError as exc:
        blocks.pixelgen_results.cleanup()
        raise RuntimeError(f"Cannot serve on {host}:{port}: {exc}") from None
    if not quiet:
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{blocks.server_port}"
        print(f"pixelgen app: serving {demo_model.folder} on {url}", flush=True)
        if host in ("127.0.0.1", "localhost", "::1"):
            print(
                "pixelgen app: only this machine can open it; to reach it from elsewhere, run with --host 0.0.0.0 "
                "(anyone on the network can then sample) or forward the port: ssh -L "
                f"{blocks.server_port}:127.0.0.1:{blocks.server_port} THIS_HOST",
                flush=True,
            )
        else:
            print(f"pixelgen app: listening on {host}; anyone who can reach this address can use the page.", flush=True)
    if not block:
        return blocks
    try:
        blocks.block_thread()
    finally:
        blocks.close()
        blocks.pixelgen_results.cleanup()
    return blocks
