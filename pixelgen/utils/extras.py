"""Optional dependencies: one sentence with the pip command instead of a ``ModuleNotFoundError`` traceback."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "MissingExtraError", "require_extra"]

# extra -> what it is for (the packages are declared in pyproject.toml's optional-dependencies).
EXTRAS = {
    "t2i": "text-to-image (the Qwen3 text encoder)",
    "eval": "FID/IS evaluation",
    "app": "the web demo",
    "train": "TensorBoard logging",
    "xformers": "the xformers attention backend",
}


class MissingExtraError(ImportError):
    """An optional package is not installed; the message names the ``pip install`` that adds it."""


def require_extra(module: str, extra: str, *, feature: str | None = None) -> ModuleType:
    """Import ``module`` or fail with one sentence naming ``pip install 'pixelgen[EXTRA]'``.

    ``feature`` says what needs it (default: the extra's purpose). Errors raised while the module itself imports
    (a broken install) are not hidden: only a missing ``module`` (or a missing parent package) is translated.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or module
        if not (module == missing or module.startswith(missing + ".")):
            raise
        what = feature or EXTRAS.get(extra, extra)
        raise MissingExtraError(
            f"{what} needs the optional package '{missing}', which is not installed: pip install 'pixelgen[{extra}]'."
        ) from None
