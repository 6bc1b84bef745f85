"""The web demo: its engine (settings checks, reproduction command, text models) and the page itself, driven in a
real headless Chromium against ``pixelgen app`` serving a tiny model on a free loopback port.

The browser tests need Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and the
``selenium`` and ``gradio`` packages; without them they are skipped with the reason. The page's screenshot after
a generation is written to ``tests/artifacts/app.png`` (or ``$PIXELGEN_APP_SCREENSHOT``).
"""

from __future__ import annotations

import io
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pixelgen
from pixelgen.app import DemoInputError, DemoModel, DemoSettings
from pixelgen.checkpoint import load_pretrained, save_pretrained

CLASS_NAMES = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead", "electric ray", "stingray"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
# gradio's queue uses pandas options that pandas 3 deprecates; nothing of ours
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")
SCREENSHOT = Path(os.environ.get("PIXELGEN_APP_SCREENSHOT", Path(__file__).parent / "artifacts" / "app.png"))


def tiny_class_model(seed: int = 0) -> torch.nn.Module:
    model = pixelgen.build_model(
        "jit", input_size=16, patch_size=4, in_channels=3, hidden_size=48, depth=2, num_heads=2,
        num_classes=len(CLASS_NAMES), in_context_len=0, in_context_start=0,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # fresh backbones output zeros (adaLN-Zero); random weights make images differ
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("app_model")
    save_pretrained(tiny_class_model(), path, extra={"class_names": CLASS_NAMES})
    return path


def library_images(folder: Path, label: int, num: int, seed: int, sampler: str, **params) -> np.ndarray:
    """What the library's generate gives for these settings: (N, H, W, 3) uint8."""
    model = load_pretrained(folder)
    images = pixelgen.generate(
        model, torch.full((num,), label), sampler=pixelgen.build_sampler(sampler, **params), seed=seed, progress=False
    )
    return images.permute(0, 2, 3, 1).numpy()


# -- the engine, without a browser ----------------------------------------------------------------------------
def test_engine_matches_generate_and_names_classes(folder):
    demo = DemoModel(folder, device="cpu")
    assert demo.kind == "class" and demo.class_choices()[3] == ("3: tiger shark", 3)
    settings = DemoSettings(sampler="heun", steps=4, guidance=2.0, interval_min=0.1, interval_max=0.9, shift=2.0)
    settings.class_label, settings.seed, settings.num_images = 2, 7, 3
    result = demo.run(settings)
    expected = library_images(folder, 2, 3, 7, "heun", **result.settings.sampler_params())
    assert np.array_equal(result.images.permute(0, 2, 3, 1).numpy(), expected)
    assert result.nfe == 7 and result.rows > 3 * 4  # Heun 2N-1; guided steps push doubled batches
    assert [t for t, _ in result.frames] == sorted(t for t, _ in result.frames) and len(result.frames) == 4
    assert "--class 2" in result.command and "--interval 0.1 0.9" in result.command


def test_engine_numbers_classes_without_names(tmp_path):
    save_pretrained(tiny_class_model(), tmp_path, extra={"class_names": ["only one"]})  # wrong length: ignored
    demo = DemoModel(tmp_path, device="cpu")
    assert demo.class_names is None and demo.class_choices()[:2] == [("0", 0), ("1", 1)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"steps": 0}, "Steps must be from 1"),
        ({"steps": 2.5}, "Steps must be a whole number"),
        ({"steps": None}, "Steps is empty"),
        ({"resolution": 18}, "multiples of its patch size 4"),
        ({"resolution": 128}, "more than 4 times this model's own"),
        ({"interval_min": 0.9, "interval_max": 0.2}, "guidance interval is empty"),
        ({"sampler": "nope"}, "Unknown sampler 'nope'"),
        ({"class_label": 99}, "Class must be from 0 to 6"),
        ({"num_images": 0}, "Number of images must be from 1"),
        ({"guidance": float("nan")}, "Guidance scale must be a finite number"),
    ],
)
def test_engine_refuses_bad_settings_in_one_sentence(folder, change, message):
    demo = DemoModel(folder, device="cpu")
    settings = DemoSettings(**{"steps": 3, "class_label": 0, **change})
    with pytest.raises(DemoInputError, match=message):
        demo.run(settings)


def test_engine_other_resolution_and_missing_folder(folder, tmp_path):
    demo = DemoModel(folder, device="cpu")
    result = demo.run(DemoSettings(steps=2, class_label=1, num_images=2, resolution=24))
    assert result.images.shape == (2, 3, 24, 24) and "--resolution 24" in result.command
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DemoModel(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        DemoModel(tmp_path)


def tiny_text_folder(path: Path):
    """A tiny text-to-image folder with its (tiny, offline) text encoder recorded; returns (model, encoder)."""
    from pixelgen.conditioners import build_tiny_qwen3
    from pixelgen.conditioners.pipeline import save_text_encoder_spec

    torch.manual_seed(0)
    model = pixelgen.build_model(
        "jit_t2i", input_size=16, patch_size=4, hidden_size=32, num_groups=2, num_blocks=2, num_text_blocks=1,
        txt_embed_dim=64, txt_max_length=128, bottleneck_dim=16,
    )  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0.0, 0.05)
    encoder = build_tiny_qwen3()
    save_pretrained(model.eval(), path)
    save_text_encoder_spec(path, encoder)
    return model, encoder


def pipeline_images(model, encoder, prompt: str, negative: str | None, num: int, seed: int, **params) -> torch.Tensor:
    from pixelgen.conditioners.pipeline import TextToImagePipeline

    pipe = TextToImagePipeline(model, encoder, device="cpu")
    return pipe([prompt], negative_prompt=negative, num_images_per_prompt=num, seed=seed, **params).images


def test_engine_text_model_matches_the_pipeline(tmp_path):
    pytest.importorskip("transformers")
    model, encoder = tiny_text_folder(tmp_path)
    demo = DemoModel(tmp_path, device="cpu")
    assert demo.kind == "text" and demo.class_choices() == []
    with pytest.raises(DemoInputError, match="prompt is empty"):
        demo.run(DemoSettings(sampler="adams", steps=3, prompt="   "))
    settings = DemoSettings(sampler="adams", steps=3, guidance=4.0, shift=3.0, seed=2, num_images=2)
    settings.prompt, settings.negative_prompt = "a photo of a cat", "blurry"
    result = demo.run(settings)
    expected = pipeline_images(model, encoder, "a photo of a cat", "blurry", 2, 2, **settings.sampler_params())
    assert torch.equal(result.images, expected) and result.frames
    assert "--prompt 'a photo of a cat' --negative-prompt blurry" in result.command


# -- the page in a browser ----------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(folder):
    pytest.importorskip("gradio", reason="the web demo needs gradio (pip install 'pixelgen[app]')")
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    command = [sys.executable, "-c", "import sys; from pixelgen.cli import main; sys.exit(main())"]
    command += ["app", "--checkpoint", str(folder), "--port", str(port), "--device", "cpu"]
    log = open(folder / "server.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300
    while True:
        if process.poll() is not None:
            log.close()
            pytest.fail(f"pixelgen app exited with {process.returncode}:\n{(folder / 'server.log').read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("pixelgen app did not answer within 300 s")
        time.sleep(0.5)
    yield url
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()


def _new_browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser tests need selenium")
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip(
            "the browser tests need Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1500",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def browser():
    driver = _new_browser()
    yield driver
    driver.quit()


class Page:
    """The demo page in one browser session."""

    def __init__(self, driver, url: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver, self.url, self.by = driver, url, By
        driver.get(url)
        self.wait(lambda: self.find("#generate"))

    def find(self, css: str):
        return self.driver.find_elements(self.by.CSS_SELECTOR, css)

    def wait(self, condition, timeout: float = 300):  # generous: CI machines can be loaded
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout, poll_frequency=0.2).until(lambda _: condition())

    def type(self, elem_id: str, value) -> None:
        from selenium.webdriver.common.keys import Keys

        box = self.find(f"#{elem_id} input, #{elem_id} textarea")[0]
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(str(value))
        box.send_keys(Keys.TAB)

    def choose(self, elem_id: str, option: str) -> None:
        """Pick ``option`` in a dropdown by clicking it in the list it opens."""
        self.find(f"#{elem_id} input")[0].click()
        css = f"#{elem_id} [role='option']"
        self.wait(lambda: [o for o in self.find(css) if o.get_attribute("aria-label") == option], timeout=30)
        [o for o in self.find(css) if o.get_attribute("aria-label") == option][0].click()
        self.wait(lambda: self.find(f"#{elem_id} input")[0].get_attribute("value") == option, timeout=30)

    def text(self, elem_id: str) -> str:
        boxes = self.find(f"#{elem_id} textarea, #{elem_id} input")
        return boxes[0].get_attribute("value") if boxes else self.find(f"#{elem_id}")[0].text

    def status(self) -> str:
        return self.find("#status")[0].text

    def press(self, elem_id: str) -> None:
        self.find(f"#{elem_id}")[0].click()

    def sources(self, elem_id: str) -> list[str]:
        return [img.get_attribute("src") for img in self.find(f"#{elem_id} .grid-wrap img, #{elem_id} img")]

    def wait_for_images(self, elem_id: str, count: int) -> list[str]:
        self.wait(lambda: len(set(self.sources(elem_id))) >= count)
        return list(dict.fromkeys(self.sources(elem_id)))


def fetch_pixels(src: str) -> np.ndarray:
    with urllib.request.urlopen(src, timeout=30) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))


def images_of(page: Page, elem_id: str, count: int) -> np.ndarray:
    sources = [s for s in page.wait_for_images(elem_id, count) if "/image_" in s]
    assert len(sources) == count, sources
    return np.stack([fetch_pixels(s) for s in sorted(sources, key=lambda s: s.rsplit("/", 1)[1])])


def test_page_shows_what_the_library_and_its_command_generate(browser, server, folder, tmp_path):
    start = time.perf_counter()
    page = Page(browser, server)
    page.choose("class", "3: tiger shark")
    page.choose("s-sampler", "adams")
    for elem_id, value in (("s-steps", 7), ("s-guidance", 2.5), ("s-shift", 1.5), ("s-order", 3)):
        page.type(elem_id, value)
    page.type("seed", 5)
    page.type("num-images", 3)
    page.press("generate")
    shown = images_of(page, "images", 3)
    params = dict(num_steps=7, guidance=2.5, guidance_interval_min=0.1, guidance_interval_max=0.9, timeshift=1.5)
    expected = library_images(folder, 3, 3, 5, "adams", order=3, **params)
    assert np.array_equal(shown, expected)  # decoded pixels, exactly
    assert len(page.wait_for_images("trajectory", 2)) >= 2
    assert "x̂ at t = 0.00" in page.find("#trajectory")[0].text
    assert page.wait_for_images("trajectory-gif", 1)[0].endswith(".gif")
    stats = page.text("stats")
    assert "7 network evaluations" in stats and "rows" in stats and " s on cpu" in stats
    assert "tiger shark" in page.find("#images")[0].text

    # The command on the page writes the same images.
    command = shlex.split(page.text("command"))
    assert command[:2] == ["pixelgen", "generate"]
    out = tmp_path / "cli"
    command[command.index("--out") + 1] = str(out)
    from pixelgen.cli import main as cli_main

    assert cli_main(command[1:]) == 0
    written = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(out.glob("*.png"))])
    assert np.array_equal(written, expected)

    # The download holds the PNGs, the GIF and the settings with that command.
    link = page.wait(lambda: [a for a in page.find("#download a") if a.get_attribute("href")])[0]
    with urllib.request.urlopen(link.get_attribute("href"), timeout=30) as response:
        archive = zipfile.ZipFile(io.BytesIO(response.read()))
    names = sorted(archive.namelist())
    assert names == ["image_00.png", "image_01.png", "image_02.png", "settings.json", "trajectory.gif"]
    assert np.array_equal(np.asarray(Image.open(archive.open("image_01.png")).convert("RGB")), expected[1])

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(SCREENSHOT))
    print(f"\nscreenshot of the page after a generation: {SCREENSHOT}")
    print(f"browser generation test: {time.perf_counter() - start:.1f} s wall")


def test_bad_input_gives_a_message_and_the_server_keeps_serving(browser, server, folder):
    page = Page(browser, server)
    page.type("s-steps", 0)
    page.press("generate")
    page.wait(lambda: "Steps must be from 1 to 1000, got 0." in page.status())
    page.type("s-steps", 3)
    page.type("resolution", 18)
    page.press("generate")
    page.wait(lambda: "multiples of its patch size 4" in page.status())
    assert "Traceback" not in browser.page_source and not page.find("#images img")
    page.type("resolution", 16)
    page.type("num-images", 2)
    page.press("generate")
    shown = images_of(page, "images", 2)
    assert shown.shape == (2, 16, 16, 3) and "✓" in page.status()


def test_compare_two_samplers_with_the_same_seed(browser, server, folder):
    page = Page(browser, server)
    [tab for tab in page.find("button[role='tab']") if "Compare" in tab.text][0].click()
    page.wait(lambda: page.find("#compare")[0].is_displayed())
    for side in ("a", "b"):
        page.type(f"{side}-steps", 4)
    page.choose("b-sampler", "euler")
    page.type("seed", 11)
    page.type("num-images", 2)
    page.press("compare")
    a, b = images_of(page, "a-images", 2), images_of(page, "b-images", 2)
    params = dict(num_steps=4, guidance=1.0, guidance_interval_min=0.1, guidance_interval_max=0.9, timeshift=2.0)
    assert np.array_equal(a, library_images(folder, 0, 2, 11, "heun", **params))
    assert np.array_equal(b, library_images(folder, 0, 2, 11, "euler", **params))
    assert "--sampler euler" in page.text("b-command") and "--sampler heun" in page.text("a-command")


def test_two_sessions_sampling_at_once_both_get_their_images(browser, server, folder):
    other = _new_browser()
    try:
        pages = [Page(browser, server), Page(other, server)]
        for page, seed in zip(pages, (21, 22)):
            page.type("s-steps", 20)  # long enough for the second request to arrive while the first samples
            page.type("seed", seed)
        for page in pages:
            page.press("generate")
        shown = [images_of(page, "images", 4) for page in pages]
    finally:
        other.quit()
    params = dict(num_steps=20, guidance=1.0, guidance_interval_min=0.1, guidance_interval_max=0.9, timeshift=2.0)
    for images, seed in zip(shown, (21, 22)):
        assert np.array_equal(images, library_images(folder, 0, 4, seed, "heun", **params))


class HeldDemo(DemoModel):
    """Holds its first sampling after the first progress report until ``release`` is set (at most 60 s), so a
    test can see the progress on the page without racing the sampler."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.release = threading.Event()

    def run(self, settings, on_progress=None):
        def report(step: int, steps: int) -> None:
            if on_progress is not None:
                on_progress(step, steps)
            self.release.wait(timeout=60)

        return super().run(settings, on_progress=report)


@pytest.fixture(scope="module")
def text_server(tmp_path_factory):
    """A text-to-image page served from this process (the class page above runs the real command)."""
    pytest.importorskip("gradio", reason="the web demo needs gradio (pip install 'pixelgen[app]')")
    pytest.importorskip("transformers")
    from pixelgen.app import launch

    folder = tmp_path_factory.mktemp("app_text_model")
    model, encoder = tiny_text_folder(folder)
    demo = HeldDemo(folder, device="cpu")
    blocks = launch(demo, port=_free_port(), block=False, quiet=True)
    yield f"http://127.0.0.1:{blocks.server_port}/", model, encoder, demo
    blocks.close()
    blocks.pixelgen_results.cleanup()


def test_text_page_prompt_negative_prompt_and_progress(browser, text_server):
    url, model, encoder, demo = text_server
    page = Page(browser, url)
    page.type("prompt", "   ")
    page.type("s-steps", 3)
    page.press("generate")
    page.wait(lambda: "The prompt is empty" in page.status())
    page.type("prompt", "a red bus")
    page.type("negative-prompt", "blurry")
    page.type("num-images", 2)
    page.type("seed", 4)
    page.press("generate")
    page.wait(lambda: "sampling: step 1 of 3" in page.find("#images")[0].text)  # progress while it samples
    demo.release.set()
    shown = images_of(page, "images", 2)
    params = dict(num_steps=3, guidance=4.0, guidance_interval_min=0.0, guidance_interval_max=1.0, timeshift=3.0)
    expected = pipeline_images(model, encoder, "a red bus", "blurry", 2, 4, sampler="adams", order=2, **params)
    assert np.array_equal(shown, expected.permute(0, 2, 3, 1).numpy())
    assert "--prompt 'a red bus' --negative-prompt blurry" in page.text("command")


def test_app_command_refuses_bad_arguments_in_one_sentence(tmp_path, capsys):
    from pixelgen.cli import main as cli_main

    assert cli_main(["app", "--checkpoint", str(tmp_path / "missing")]) != 0
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
    assert cli_main(["app", "--checkpoint", str(tmp_path), "--port", "70000"]) != 0
    assert "--port must be from 0 to 65535" in capsys.readouterr().err
