"""Plots of interpolation curves (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path

from .interpolation import Curve
from .io import atomic_write


def plot_curves(curves: dict[str, Curve], path: str | Path, *, title: str = "",
                force: bool = False) -> Path:
    """Loss and accuracy against lambda, train (dashed) and test (solid), one colour per curve."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for i, (label, curve) in enumerate(curves.items()):
        colour = f"C{i}"
        ax_loss.plot(curve.lambdas, curve.test_loss, "-", color=colour, label=f"{label} test")
        ax_loss.plot(curve.lambdas, curve.train_loss, "--", color=colour, label=f"{label} train")
        ax_acc.plot(curve.lambdas, curve.test_acc, "-", color=colour, label=f"{label} test")
        ax_acc.plot(curve.lambdas, curve.train_acc, "--", color=colour, label=f"{label} train")
    ax_loss.set(xlabel="λ (0 = model A, 1 = model B)", ylabel="cross-entropy loss")
    ax_acc.set(xlabel="λ (0 = model A, 1 = model B)", ylabel="accuracy")
    ax_loss.legend(fontsize=8)
    return _save(fig, path, title=title, force=force)


def _save(fig, path: str | Path, *, title: str, force: bool) -> Path:
    """Write ``fig`` as PNG atomically and close it."""
    import matplotlib.pyplot as plt
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110),
                            force=force)
    finally:
        plt.close(fig)


Series = dict[str, tuple[list[float], list[float], list[float] | None]]  # label -> x, y, yerr


def plot_panels(panels: list[tuple[str, str, str, Series]], path: str | Path, *,
                title: str = "", logx: bool = False, force: bool = True) -> Path:
    """One subplot per (title, xlabel, ylabel, series); error bars where yerr is given."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    for ax, (panel_title, xlabel, ylabel, series) in zip(axes[0], panels):
        for label, (x, y, yerr) in series.items():
            if yerr is None:
                ax.plot(x, y, marker="o", markersize=3, label=label)
            else:
                ax.errorbar(x, y, yerr=yerr, marker="o", markersize=3, capsize=3, label=label)
        ax.set(title=panel_title, xlabel=xlabel, ylabel=ylabel)
        if logx:
            ax.set_xscale("log", base=2)
        ax.legend(fontsize=8)
    return _save(fig, path, title=title, force=force)


def curve_panels(curves: dict[str, Curve]) -> list[tuple[str, str, str, Series]]:
    """Four panels (train/test loss/accuracy vs lambda) for a set of interpolation curves."""
    panels = []
    for metric, label in (("train_loss", "train loss"), ("test_loss", "test loss"),
                          ("train_acc", "train accuracy"), ("test_acc", "test accuracy")):
        panels.append((label, "λ", label, {name: (c.lambdas, getattr(c, metric), None)
                                           for name, c in curves.items()}))
    return panels
