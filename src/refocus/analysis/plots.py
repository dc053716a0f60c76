"""Shared matplotlib helpers: one look for every analysis figure.

Everything renders with the non-interactive Agg backend (no display on servers or in
tests); :func:`figure` applies the house style inside a context, so importing this module
does not change matplotlib's global state for anyone else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

STYLE: dict[str, Any] = {
    "figure.dpi": 110,
    "savefig.dpi": 130,
    "font.size": 9.5,
    "axes.titlesize": 10.5,
    "axes.labelsize": 9.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "legend.fontsize": 8.5,
    "legend.frameon": False,
}

COLORS = {
    "policy": "#d95f02",  # ReFoCUS orange, as on the project page
    "uniform": "#1f78b4",
    "random": "#7570b3",
    "oracle": "#1b9e77",
    "over": "#d95f02",
    "under": "#7f7f7f",
    "evidence": "#2ca02c",
}
"""Colours by selector kind (the part of the name before ``:``) and by role."""
SEQUENCE = ["#d95f02", "#1f78b4", "#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d"]
HEATMAP_CMAP = "RdYlGn"
"""Red = missed, green = found: the project page's V-NIAH colours."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def figure(*args: Any, **kwargs: Any) -> Iterator[tuple[Any, Any]]:
    """``plt.subplots(*args, **kwargs)`` under the house style; closes the figure on exit."""
    plt = _pyplot()
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(*args, **kwargs)
        try:
            yield fig, axes
        finally:
            plt.close(fig)


def save(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as PNG (parents created, written under a temporary name first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, bbox_inches="tight", facecolor="white")
    tmp.replace(path)
    return path

def display_name(name: str, names: Sequence[str] = ()) -> str:
    """Short label of a selector spec: ``policy:runs/demo/policy`` -> ``policy`` when it is the
    only policy among ``names``, else ``policy (demo/policy)``."""
    kind, _, arg = name.partition(":")
    if not arg:
        return kind
    if sum(n.partition(":")[0] == kind for n in names) <= 1:
        return kind
    tail = "/".join(Path(arg).parts[-2:])
    return f"{kind} ({tail})"


def heatmap(
    ax: Any,
    values: np.ndarray,
    xlabels: Sequence[str],
    ylabels: Sequence[str],
    *,
    vmin: float = 0.0,
    vmax: float = 1.0,
    cmap: str = HEATMAP_CMAP,
    annotate: bool = True,
    fmt: str = "{:.2f}",
) -> Any:
    """Draw a (rows, cols) matrix with labelled ticks and the value in each cell; NaN is grey.

    Returns the image (for a colour bar).
    """
    plt = _pyplot()
    data = np.ma.masked_invalid(np.asarray(values, dtype=np.float64))
    colormap = plt.get_cmap(cmap).with_extremes(bad="#d9d9d9")
    image = ax.imshow(data, cmap=colormap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(xlabels)), labels=list(xlabels))
    ax.set_yticks(range(len(ylabels)), labels=list(ylabels))
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if annotate:
        norm = plt.Normalize(vmin, vmax)
        for (r, c), value in np.ndenumerate(np.asarray(values, dtype=np.float64)):
            if np.isnan(value):
                text, color = "–", "black"
            else:
                text = fmt.format(value)
                # dark text on the light middle of RdYlGn, white on the saturated ends
                color = "black" if 0.25 < norm(value) < 0.8 else "white"
            ax.text(c, r, text, ha="center", va="center", fontsize=8, color=color)
    return image


def bar_labels(ax: Any, bars: Any, fmt: str = "{:.2f}", fontsize: float = 7.5) -> None:
    """Write each bar's height above it (skipping NaN)."""
    for bar in bars:
        height = bar.get_height()
        if np.isfinite(height):
            ax.annotate(fmt.format(height), (bar.get_x() + bar.get_width() / 2, height),
                        xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                        fontsize=fontsize)
