"""Figure plumbing shared by every stage that draws: matplotlib without a display, PNGs written atomically."""
from __future__ import annotations

import os

from drllm.core.artifacts import atomic_path


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use: most stages never draw)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """Write `fig` as a PNG atomically (temp file, then rename) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    pyplot().close(fig)


def placeholder_figure(path, title: str, text: str) -> None:
    """A placeholder figure, so a missing method never breaks the report (or snakemake's declared outputs)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=14, transform=ax.transAxes)
    ax.set_title(title)
    ax.set_axis_off()
    save_figure(fig, path)
