"""The comparison's figures: curves per method, and the worst-task vs average accuracy trade-off of a sweep."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mtgrpo_backends.harness.record import RunRecord
from mtgrpo_backends.harness.summary import by_method


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _smooth(x: NDArray[np.float64], width: int) -> NDArray[np.float64]:
    """Moving average of each column over `width` rows ('valid' part only)."""
    if width <= 1 or x.shape[0] < width:
        return x
    kernel = np.ones(width) / width
    return np.stack([np.convolve(x[:, j], kernel, mode="valid") for j in range(x.shape[1])], axis=1)


def fit_title(fig: Any, title: str, fontsize: float) -> Any:
    """The figure's title (returned), wrapped at spaces where one line is wider than the figure (a one-method demo
    is 3.6 in wide, a title of its settings about 10 in)."""
    text = fig.suptitle(title, fontsize=fontsize)
    width = text.get_window_extent().width
    limit = 0.95 * fig.bbox.width
    if width > limit:
        text.set_text(textwrap.fill(title, max(10, int(len(title) * limit / width))))
    return text


def plot_curves(path: str | Path, task_names: Sequence[str], records: Sequence[RunRecord], title: str) -> None:
    """Per method (columns): per-task held-out accuracy, task weights z and realized batch shares over steps (means
    over seeds; shares smoothed over ~5% of the steps). With more than 12 tasks: min / median / max over tasks."""
    plt = _pyplot()
    groups = by_method(records)
    cols = len(groups)
    fig, axes = plt.subplots(3, cols, figsize=(2.6 * cols + 1, 6.6), sharex=True, squeeze=False)
    many = len(task_names) > 12
    for c, (method, runs) in enumerate(groups.items()):
        acc = np.mean([r.accuracy for r in runs], axis=0)
        weights = np.mean([r.weights for r in runs], axis=0)
        shares = _smooth(np.mean([r.shares for r in runs], axis=0), max(1, runs[0].steps // 20))
        steps = np.arange(1, runs[0].steps + 1)
        curves = ((runs[0].eval_steps, acc), (steps, weights), (steps[steps.shape[0] - shares.shape[0] :], shares))
        for row, (x, y) in enumerate(curves):
            ax = axes[row, c]
            if many:
                for q, style, name in ((0.0, ":", "min"), (0.5, "-", "median"), (1.0, "--", "max")):
                    ax.plot(x, np.quantile(y, q, axis=1), style, color="k", lw=1, label=name)
            else:
                for j, name in enumerate(task_names):
                    ax.plot(x, y[:, j], lw=1, label=name, marker="." if row == 0 and len(x) <= 30 else None)
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
        axes[0, c].set_title(f"{method} ({len(runs)} seed{'s' if len(runs) > 1 else ''})", fontsize=9)
        axes[2, c].set_xlabel("step")
    for row, label in enumerate(("held-out accuracy", "task weight z", "realized share")):
        axes[row, 0].set_ylabel(label)
    axes[0, 0].legend(fontsize=7)
    fit_title(fig, title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def plot_sweep(path: str | Path, summary: dict[str, Any], swept: Sequence[str]) -> None:
    """Worst-task vs average accuracy (mean ± std over seeds) for the swept methods (a line) and the others."""
    plt = _pyplot()
    rows = summary["methods"]
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    line = [m for m in swept if m in rows]
    ax.plot([rows[m]["average"]["mean"] * 100 for m in line], [rows[m]["worst"]["mean"] * 100 for m in line], "-")
    for m, row in rows.items():
        x, y = row["average"]["mean"] * 100, row["worst"]["mean"] * 100
        ax.errorbar(
            x,
            y,
            xerr=row["average"]["std"] * 100,
            yerr=row["worst"]["std"] * 100,
            fmt="o" if m in swept else "s",
            color="C0" if m in swept else "C3",
            ms=4,
            capsize=2,
        )
        ax.annotate(m, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("average accuracy %")
    ax.set_ylabel("worst-task accuracy %")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
