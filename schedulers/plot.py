"""lr-vs-time figures, shared by the preview and the lecture curves."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path


def plot_lr_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: Path,
    title: str,
    *,
    small: bool = False,
    log_y: bool = False,
    marks: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
) -> Path:
    """One line per label; x in epochs (fractional for per-batch schedules). `marks`: points
    drawn as dots, one legend entry per label (the preview's branch points)."""
    import matplotlib  # ~0.5 s: only when a plot is drawn

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.2, 2.0) if small else (7, 4), dpi=100)
    for label, (x, y) in curves.items():
        ax.plot(x, y, label=label, linewidth=1.2 if small else 1.6)
    for label, (x, y) in (marks or {}).items():
        ax.plot(x, y, "o", label=label, color="black", markersize=3 if small else 5)
    if log_y:
        ax.set_yscale("log")
    ax.set_title(textwrap.fill(title, 40 if small else 70), fontsize=8 if small else 11)
    if small:
        ax.tick_params(labelsize=7)
    else:
        ax.set_xlabel("epoch")
        ax.set_ylabel("learning rate")
        ax.grid(alpha=0.3)
        if len(curves) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
