"""Make a package's ``pixelgen`` entry points visible without pip: a ``.dist-info`` on ``sys.path``."""

from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path

from pixelgen import registry


def write_dist_info(root: Path, dist: str, entry_points: dict[str, str], version: str = "0.0.1") -> Path:
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = ["[pixelgen]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return info


@contextlib.contextmanager
def on_path(*paths: Path, modules: tuple[str, ...] = ()):
    """Put ``paths`` on sys.path, reset plugin discovery before and after."""
    added = [str(p) for p in paths]
    sys.path[:0] = added
    importlib.invalidate_caches()
    registry.reset_plugins()
    try:
        yield
    finally:
        for p in added:
            sys.path.remove(p)
        for m in list(sys.modules):
            if any(m == mod or m.startswith(mod + ".") for mod in modules):
                del sys.modules[m]
        importlib.invalidate_caches()
        registry.reset_plugins()
