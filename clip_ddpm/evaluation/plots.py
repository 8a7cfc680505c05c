"""Line plots for reports (matplotlib, imported only here and only when a plot is drawn)."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence


def plot_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str, xlabel: str,
                ylabel: str, title: str, marks: Mapping[str, float] | None = None) -> None:
    """One line per name (x values, y values) in a PNG; `marks[name]` circles the point at that x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for name, (xs, ys) in curves.items():
        (line,) = axes.plot(xs, ys, marker="o", markersize=3, label=name)
        if marks and name in marks and marks[name] in list(xs):
            x = marks[name]
            axes.plot([x], [list(ys)[list(xs).index(x)]], marker="o", markersize=10, fillstyle="none",
                      color=line.get_color())
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
