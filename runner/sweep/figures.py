"""The sweep report's figures: a line per configuration, labelled below the axes with every
label whole. A label is a configuration's overrides (a branch's ran to 150 characters): in
a legend inside the axes at this size it was wider than the 8-inch figure and was cut, so
two branches whose labels differ only at their end (`epochs=15`, `epochs=30`) could not
be told apart. Below the axes each label wraps to the figure's width and the figure grows
by the legend's height, so the curves keep their room."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

from runner.io.files import replace_atomic

SIZE = (8.0, 4.5)  # inches, at DPI: the axes' room, the legend's added below
DPI = 100
FONT_SIZE = 7
WRAP = 120  # characters on a legend line to start from; fewer while it is wider than the figure
ROOM = 0.96  # of the figure's width a legend may take


def new_figure() -> tuple[Any, Any]:
    """A figure and its axes, laid out by matplotlib's constrained layout, which places a
    legend `legend_below` puts outside the axes within the figure."""
    import matplotlib  # ~0.5 s: only when a plot is drawn, not for the callback's import

    matplotlib.use("Agg")  # before pyplot: no display needed
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=SIZE, dpi=DPI, layout="constrained")


def wrapped(label: str, width: int) -> str:
    """The label on lines of at most `width` characters, broken between overrides where it
    can (a single longer override is broken inside)."""
    return "\n".join(textwrap.wrap(label, width, break_on_hyphens=False)) or label


def legend_below(fig: Any, ax: Any) -> Any:
    """The axes' labels in a legend below them, each label whole: wrapped until the
    legend fits the figure's width, the figure as much taller as the legend is high.
    None when nothing is labelled (a sweep whose jobs all failed)."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return None
    renderer = fig.canvas.get_renderer()
    width = WRAP
    while True:
        legend = fig.legend(
            handles,
            [wrapped(label, width) for label in labels],
            loc="outside lower center",
            fontsize=FONT_SIZE,
            frameon=False,
        )
        box = legend.get_window_extent(renderer)
        if box.width <= ROOM * fig.bbox.width or width <= 10:
            break
        legend.remove()
        width = max(10, min(width - 1, int(width * ROOM * fig.bbox.width / box.width)))
    # whole pixels: the png holds the figure's every row, the legend's last one too
    fig.set_size_inches(SIZE[0], (SIZE[1] * fig.dpi + math.ceil(box.height)) / fig.dpi)
    return legend


def epoch_axis(ax: Any, label: str = "epoch") -> None:
    """An x axis of epochs: labelled, its ticks whole numbers (matplotlib's default puts
    ticks at 2.5, 7.5, ... on a 20-epoch run, epochs no row has)."""
    from matplotlib.ticker import MaxNLocator  # matplotlib: loaded by `new_figure` already

    ax.set_xlabel(label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def line_style(i: int) -> str:
    """The i-th line's dash: solid for the first 10 (matplotlib's 10 colours), then dashed,
    dotted, dash-dotted, so that the 11th line is not the 1st's twin (11 rows in the LM
    budgets sweep)."""
    return ("-", "--", ":", "-.")[i // 10 % 4]


def save_png(fig: Any, path: Path) -> Path:
    """The figure as a png at `path` (replaced whole: a reader never sees half a file),
    then closed."""
    import matplotlib.pyplot as plt  # already loaded by `new_figure` (see there)

    replace_atomic(path, lambda tmp: fig.savefig(tmp, format="png"), False)
    plt.close(fig)
    return path
