"""Every ```python block of README.md runs as it stands (on CPU, offline, in a fresh process and an empty folder),
and so does every ```bash block marked ``<!-- readme-test: run -->`` (cheap commands); the other bash blocks
(training, downloads, GPUs) are not run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUN_MARK = "<!-- readme-test: run -->"
_FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def readme_blocks() -> list[tuple[str, str, str, bool]]:
    """(language, section heading, code, marked to run) for every fenced block, in order."""
    text = README.read_text(encoding="utf-8")
    blocks = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()]
        headings = re.findall(r"^#+ (.+)$", before, re.MULTILINE)
        marked = before.rstrip().endswith(RUN_MARK)
        blocks.append((match.group(1), headings[-1] if headings else "top", match.group(2), marked))
    return blocks


def _params(language: str, marked_only: bool):
    found = []
    for n, (lang, heading, code, marked) in enumerate(readme_blocks()):
        if lang == language and (marked or not marked_only):
            found.append(pytest.param(code, id=f"{n}:{heading}"))
    return found


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PIXELGEN_OFFLINE="1", OMP_NUM_THREADS="1")
    env.update(MPLBACKEND="Agg", CUDA_VISIBLE_DEVICES="")
    return env


def test_the_readme_has_python_examples():
    assert len(_params("python", marked_only=False)) >= 5


@pytest.mark.parametrize("code", _params("python", marked_only=False))
def test_readme_python_block_runs(code, tmp_path):
    script = tmp_path / "block.py"
    script.write_text(code, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"the README block failed:\n{code}\n--- stderr ---\n{done.stderr[-3000:]}"


@pytest.mark.parametrize("code", _params("bash", marked_only=True))
def test_readme_bash_block_marked_to_run_runs(code, tmp_path):
    done = subprocess.run(
        ["bash", "-e", "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"the README block failed:\n{code}\n--- stderr ---\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr
