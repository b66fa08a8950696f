"""Plots of interpolation curves (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path

from .interpolate import Curve
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
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110),
                            force=force)
    finally:
        plt.close(fig)
