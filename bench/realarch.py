"""Spec inference and planted-permutation recovery on real architectures, as they ship.

    python bench/realarch.py [--cases SUBSTRING ...] [--starts identity sorted activation]
                             [--no-slow] [--out FILE.md]

Runs every case of :mod:`permalign.testing.catalogue` whose library imports in this
environment (torchvision and timm need their own venv: see the README of bench/) and prints a
table: groups, units, fixed axes, output check, and for each weight-matching start whether the
planted permutation was recovered and the fraction of its objective reached. ``auto`` is the
start with the highest objective among identity and sorted, which is what ``init="auto"``
keeps when no data is given. Writes a JSON file beside the markdown with every number.
"""
from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import torch

from _common import emit, machine, table
from permalign.testing import CASES, run_case
from permalign.testing.harness import CaseReport, MatchOutcome
from permalign.testing.catalogue import library_unavailable


def auto_outcome(report, starts=("identity", "sorted")):
    """The outcome init="auto" (no data) keeps: the best objective, ties to the first start."""
    runs = [report.matching[s] for s in starts if s in report.matching]
    if len(runs) < len(starts):
        return None
    return max(runs, key=lambda o: (o.objective_ratio, -runs.index(o)))


def load_report(data: dict) -> CaseReport:
    """A CaseReport from its JSON form."""
    report = CaseReport(**{k: v for k, v in data.items() if k != "matching"})
    report.matching = {k: MatchOutcome(**v) for k, v in data["matching"].items()}
    return report


def mark(outcome) -> str:
    if outcome is None:
        return "-"
    return f"{'yes' if outcome.recovered else 'no'} {outcome.objective_ratio:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", nargs="*", help="substrings of case names to run")
    parser.add_argument("--starts", nargs="*", default=["identity", "sorted", "activation"])
    parser.add_argument("--no-slow", action="store_true")
    parser.add_argument("--out")
    parser.add_argument("--update", action="store_true",
                        help="re-run only --cases and keep the other rows of --out's JSON")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    skipped = {lib: library_unavailable(lib) for lib in ("transformers", "torchvision", "timm")}
    reports = []
    for name, case in CASES.items():
        if args.cases and not any(s in name for s in args.cases):
            continue
        if case.unavailable() or (args.no_slow and case.slow):
            continue
        report = run_case(case, tuple(args.starts))
        reports.append(report)
        print(f"{name}: {report.failed or 'ok'} {report.error[:120]} {report.seconds:.1f}s",
              flush=True)
    command = f"python bench/realarch.py {' '.join(os.sys.argv[1:])}"
    commands = [command]
    if args.update and args.out and Path(args.out).with_suffix(".json").exists():
        old = json.loads(Path(args.out).with_suffix(".json").read_text())
        commands = old.get("commands", []) + [command]
        previous = old["reports"]
        fresh = {r.name: r for r in reports}
        reports = [fresh.pop(d["name"], None) or load_report(d) for d in previous]
        reports += list(fresh.values())
    rows = []
    for r in reports:
        auto = auto_outcome(r)
        rows.append([r.name, r.kind, f"{r.params:,}", r.groups, r.units, r.fixed,
                     "-" if r.failed in ("build", "infer", "load") else f"{r.max_diff:.1e}"]
                    + [mark(r.matching.get(s)) for s in args.starts] + [mark(auto),
                    f"{r.seconds:.1f}", (f"{r.failed}: {r.error}" if r.failed else "")
                    .replace("|", "/")])
    total = len(reports)
    matched = [r for r in reports if r.matching]
    clean = [r for r in reports if r.failed is None]
    summary = (f"{len(clean)}/{total} cases whose spec was inferred, preserved the outputs "
               "and left free every axis listed as free; planted permutation recovered on the "
               f"{len(matched)} cases whose spec preserved the outputs: ")
    counts = {s: sum(r.recovered(s) for r in matched) for s in args.starts}
    auto_count = sum(1 for r in matched if (a := auto_outcome(r)) and a.recovered)
    summary += "; ".join(f"{s} {c}/{len(matched)}" for s, c in counts.items())
    summary += f"; auto (best of identity, sorted) {auto_count}/{len(matched)}"
    load = os.getloadavg()
    text = (f"## Real architectures: spec inference and planted recovery\n\n"
            f"Machine: {machine()}; load average {load[0]:.2f} at the end\n\n"
            f"Command: {', then '.join(f'`{c}`' for c in commands)}\n\n"
            f"Libraries not importable here: "
            f"{'; '.join(f'{k} ({v})' for k, v in skipped.items() if v) or 'none'}\n\n"
            f"{summary}\n\n"
            "Cells of the start columns: recovered, and objective reached / objective of the "
            "planted permutation.\n\n"
            + table(["case", "kind", "params", "groups", "units", "fixed axes",
                     "output change"] + list(args.starts) + ["auto", "s", "failure"], rows))
    emit(text, args.out)
    if args.out:
        Path(args.out).with_suffix(".json").write_text(json.dumps(
            {"machine": machine(), "time": time.time(), "starts": args.starts,
             "commands": commands,
             "reports": [r.to_json() for r in reports]}, indent=1))


if __name__ == "__main__":
    main()
