"""The software versions that can change generated images or scores, recorded in every result file."""

from __future__ import annotations

import platform

__all__ = ["software_versions"]


def software_versions() -> dict[str, str | None]:
    """``{"pixelgen", "torch", "cuda", "numpy", "python"}`` (cuda: the CUDA torch was built with, or None)."""
    import numpy as np
    import torch

    import pixelgen

    return {
        "pixelgen": pixelgen.__version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
