"""Writing the PNG files a person looks at: matplotlib without a display, files replaced atomically."""

from __future__ import annotations

import os


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str, dpi: int = 100) -> None:
    """Write ``fig`` to ``path`` through a temporary file, so a kill never leaves half a picture; close it."""
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=dpi)
    pyplot().close(fig)
    os.replace(tmp, path)
