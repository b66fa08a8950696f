"""BatchNorm ResNet-20 at several widths: the midpoint as is, after a BN reset, after REPAIR."""
from __future__ import annotations

from typing import Any

from ..plot import plot_panels
from .common import ExperimentConfig, ExperimentResult, experiment, table, verdict_from_checks
from .convnets import BN_VARIANTS, ConvSizes, bn_width_sweep, conv_data, conv_setup
from .diagnosis import measured_cause, summary_line

METHODS = ["weight", "activation"]

SIZES = {
    "quick": ConvSizes(widths=(1,), train=300, downsample=2, epochs=1, eval_train=200,
                       eval_test=200, points=3),
    "full": ConvSizes(widths=(1, 2, 4), train=4000, downsample=2, epochs=10, eval_train=500,
                      eval_test=1000, points=3),
    "paper": ConvSizes(widths=(1, 2, 4, 8, 16), train=None, downsample=1, epochs=None,
                       eval_train=10000, eval_test=None, points=11),
}


def midpoint_rows(sweep: dict[int, Any], points: int) -> list[dict[str, Any]]:
    """One row per (width, line): endpoint and midpoint accuracy, midpoint loss, barrier."""
    mid = points // 2
    rows = []
    for width, pair in sweep.items():
        for name, c in pair.comparison.curves.items():
            line, _, variant = name.partition(" ")
            rows.append({"width": width, "line": line, "variant": variant or "as is",
                         "endpoint_acc": [c.test_acc[0], c.test_acc[-1]],
                         "midpoint_acc": c.test_acc[mid], "midpoint_loss": c.test_loss[mid],
                         "barrier": c.barriers()["test_loss"]})
    return rows


def bn_verdict(rows: list[dict[str, Any]], cause: str = "", target: float = 0.5
               ) -> dict[str, str]:
    """Checks of the claim from the measured rows (see :func:`midpoint_rows`); ``cause``
    (the measured diagnostics) is quoted where a check fails."""
    def acc(width, line, variant):
        return next(r["midpoint_acc"] for r in rows
                    if (r["width"], r["line"], r["variant"]) == (width, line, variant))
    widths = sorted({r["width"] for r in rows})
    methods = sorted({r["line"] for r in rows} - {"naive"})
    w0 = widths[0]
    best = max(methods, key=lambda m: acc(w0, m, "+ BN reset"))
    reset, as_is = acc(w0, best, "+ BN reset"), acc(w0, best, "as is")
    checks = [(f"at x{w0} the aligned ({best}) midpoint collapses without a BN reset "
               f"({as_is:.3f}) and recovers with one ({reset:.3f})", reset - as_is > 0.1),
              (f"aligned ({best}) + BN reset midpoint at x{w0} is {reset:.3f} (>= {target})",
               reset >= target)]
    for w in widths:
        m = max(methods, key=lambda m: acc(w, m, "+ REPAIR"))
        rep, res = acc(w, m, "+ REPAIR"), max(acc(w, k, "+ BN reset") for k in methods)
        checks.append((f"x{w}: REPAIR {rep:.3f} vs BN reset {res:.3f} (best methods)",
                       rep >= res - 0.005))
    return verdict_from_checks(checks, cause)


@experiment("bn-repair", "Interpolated BatchNorm models collapse (variance collapse) unless "
            "their statistics are re-estimated; REPAIR (Jordan et al.) recovers more than a BN "
            "reset (paper §4 and REPAIR paper: ResNet-20 x1 on CIFAR-10 permuted midpoint "
            "12.7% -> 67.6% with a BN reset).", SIZES)
def run(cfg: ExperimentConfig, sizes: ConvSizes) -> ExperimentResult:
    data, eval_data = conv_data(cfg, sizes)
    sweep = bn_width_sweep(cfg, sizes, data, eval_data, METHODS, BN_VARIANTS,
                           naive_variants=["", "+ BN reset"])
    rows = midpoint_rows(sweep, sizes.points)
    widths = list(sweep)
    panels = [(f"{variant}: midpoint test acc", "width", "accuracy",
               {line: (widths, [r["midpoint_acc"] for r in rows
                                if r["line"] == line and r["variant"] == variant], None)
                for line in ["naive", *METHODS]
                if any(r["line"] == line and r["variant"] == variant for r in rows)})
              for variant in ("as is", "+ BN reset", "+ REPAIR")]
    plot_panels(panels, cfg.out / "bn_repair.png", logx=len(widths) > 1,
                title=f"BatchNorm ResNet-20 on {data.name}: midpoints")
    setup = conv_setup(data, eval_data, sizes)
    setup["diagnostics"] = {f"x{w}": summary_line(p.diagnostics) for w, p in sweep.items()}
    return ExperimentResult(
        results={"rows": rows,
                 "diagnostics": {f"x{w}": p.diagnostics for w, p in sweep.items()},
                 "curves": {f"x{w}": {n: c.to_json()["curve"]
                                      for n, c in p.comparison.curves.items()}
                            for w, p in sweep.items()}},
        table=table(["width", "line", "variant", "endpoint test acc (A, B)",
                     "midpoint test acc", "midpoint test loss", "test loss barrier"],
                    [[f"x{r['width']}", r["line"], r["variant"],
                      " / ".join(f"{a:.3f}" for a in r["endpoint_acc"]),
                      round(r["midpoint_acc"], 4), round(r["midpoint_loss"], 4),
                      round(r["barrier"], 4)] for r in rows]),
        plots=["bn_repair.png"], setup=setup, verdict=bn_verdict(rows, measured_cause(sweep)),
        seeds={"models": [0, 1], "matching": 0})
