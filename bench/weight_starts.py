"""Weight matching from different starts on trained pairs: objective reached and barrier.

    python bench/weight_starts.py [--dataset digits,fashion-mnist,text] [--models KEY,...]
                                  [--epochs N] [--spread N] [--out FILE]

For every pair, two models of one architecture are trained from seeds 0 and 1 (cached under
``bench/.cache``), B is weight-matched to A from each start (identity = paper Algorithm 1,
sorted weights, activations on the first 256 training inputs, and ``auto``, the CLI's
default: the best of those three) and the barrier of the line from A to the aligned B is
measured on held-out data (BatchNorm statistics re-estimated at every point where present).
The pairs (``--dataset``, comma-separated):

- ``digits``: MLP, VGG-11 and ResNet-20 on the bundled 8x8 digits (quick-adam, ``--epochs``,
  default 5);
- ``fashion-mnist``: an MLP 3x512 (quick-adam, 5 epochs, all 60,000 images) and a VGG-11 at
  half width with BatchNorm (official-conv recipe: SGD, crop + flip, 3 epochs on 10,000 images);
- ``text``: a 2-layer GPT-2 (transformers ``GPT2Config``, 4 heads, width 128, byte tokens)
  trained for next-byte prediction on ``bench/data/vim-user-manual.txt`` (windows of 128
  bytes, the last 10 % held out; quick-adam, 15 epochs, batch 16), spec inferred from its graph.

``auto`` returns exactly the result of the start that won (same seed, same runs), so its curve
is that start's curve (checked: the permutations are compared, and measured again if they
differ); its seconds are its own (it runs every start). ``--spread N`` also runs identity and
auto with weight-matching seeds 0..N-1 (the order groups are visited in) and reports the range
of objective and barrier: how far apart local optima of one start are.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from _common import (emit, fmnist_pair, load_note, machine, table, text_pair,
                     trained_pair)
from permalign.data import load_digits
from permalign.interpolation import Curve, interpolation_curve
from permalign.match import weight_matching
from permalign.permutation import apply_permutation

STARTS = ["identity", "sorted", "activation", "auto"]
ACTIVATION_INPUTS = 256  # the CLI's number of training inputs for the activation start


@dataclass(frozen=True)
class Pair:
    """A trained pair and how its barrier is measured."""

    label: str  # the model column
    load: Callable[[int | None], tuple]  # epochs override -> (model, spec, a, b, data)
    training: str  # how the pair was trained, for the notes
    points: int = 25  # interpolation points
    eval_train: int | None = None  # training examples the curve uses (BN reset too); None: all
    eval_test: int | None = None  # test examples the curve uses; None: all


def _digits(model_string: str) -> Callable[[int | None], tuple]:
    def load(epochs: int | None) -> tuple:
        return (*trained_pair(model_string, epochs=epochs or 5), load_digits())
    return load


PAIRS: dict[str, dict[str, Pair]] = {
    "digits": {
        "mlp": Pair("mlp:depth=3,width=128", _digits("mlp:depth=3,width=128"),
                    "quick-adam, --epochs (default 5)"),
        "vgg11": Pair("vgg11:width=0.25,norm=bn", _digits("vgg11:width=0.25,norm=bn"),
                      "quick-adam, --epochs (default 5)"),
        "resnet20": Pair("resnet20:width=2,norm=ln", _digits("resnet20:width=2,norm=ln"),
                         "quick-adam, --epochs (default 5)"),
    },
    "fashion-mnist": {
        "mlp": Pair("mlp:depth=3,width=512",
                    lambda e: fmnist_pair("mlp:depth=3,width=512", epochs=e or 5),
                    "quick-adam, 5 epochs, all 60,000 training images",
                    eval_train=10000),
        "vgg11": Pair("vgg11:width=0.5,norm=bn",
                      lambda e: fmnist_pair("vgg11:width=0.5,norm=bn", epochs=e or 3,
                                            train=10000, recipe="official-conv"),
                      "official-conv (SGD lr 0.1, warm-up + cosine, weight decay 5e-4, crop + "
                      "flip), 3 epochs on 10,000 training images (seeded subset)",
                      points=11, eval_train=2048),
    },
    "text": {
        "gpt2": Pair("GPT-2 2 layers x 4 heads, d=128, bytes (spec inferred)",
                     lambda e: text_pair(epochs=e or 15),
                     "quick-adam (Adam lr 1e-3, warm-up + cosine), batch 16 windows of 128 "
                     "bytes, 15 epochs, dropout 0.1 (GPT2Config default)",
                     eval_train=256),
    },
}


class Loaded:
    """A pair's trained states, with the inputs of the activation start and the barrier."""

    def __init__(self, pair: Pair, epochs: int | None) -> None:
        self.pair = pair
        self.model, self.spec, self.a, self.b, data = pair.load(epochs)
        self.inputs = (data.train_x[:ACTIVATION_INPUTS],)
        self.scored = data.subset(train=pair.eval_train, test=pair.eval_test)

    def curve(self, state_b: dict) -> Curve:
        """The line from A to ``state_b`` on the pair's evaluation data."""
        return interpolation_curve(self.model, self.a, state_b, self.scored,
                                   points=self.pair.points)

    def barriers(self, state_b: dict) -> dict[str, float]:
        return self.curve(state_b).barriers()

    def match(self, start: str, seed: int = 0):
        """Weight matching of B to A from ``start`` (group order seeded by ``seed``)."""
        return weight_matching(self.spec, self.a, self.b, init=start, seed=seed,
                               model=self.model,
                               inputs=self.inputs if start in ("activation", "auto") else None)


def measure(pair: Loaded) -> tuple[list[list[object]], dict[str, tuple], str]:
    """Rows of the table for one pair, per start (objective, barriers, seconds, won), and
    the endpoints' test loss and accuracy."""
    line = pair.curve(pair.b)
    naive = line.barriers()
    ends = (f"test loss A {line.test_loss[0]:.4f}, B {line.test_loss[-1]:.4f}; accuracy "
            f"A {100 * line.test_acc[0]:.2f} %, B {100 * line.test_acc[-1]:.2f} %")
    results: dict[str, tuple] = {}
    perms: dict[str, dict] = {}
    for start in STARTS:
        began = time.perf_counter()
        result = pair.match(start)
        seconds = time.perf_counter() - began
        won = result.info["init"]
        perms[start] = result.perm
        same = start == "auto" and won in perms and all(
            torch.equal(result.perm[g], perms[won][g]) for g in pair.spec.groups)
        measured = (results[won][1] if same else
                    pair.barriers(apply_permutation(pair.spec, result.perm, pair.b)))
        results[start] = (result.history[-1], measured, seconds, won)
        print(f"{pair.pair.label} {start}: won {won}, objective {result.history[-1]:.6g}, "
              f"test-loss barrier {measured['test_loss']:.4f}, {seconds:.1f} s", flush=True)
    identity = results["identity"][0]
    rows = [[pair.pair.label, start, won, f"{objective:.6g}", f"{objective / identity:.4f}",
             f"{bar['test_loss']:.4f}", f"{100 * bar['test_acc']:.2f}",
             f"{naive['test_loss']:.4f}", f"{seconds:.2f}"]
            for start, (objective, bar, seconds, won) in results.items()]
    return rows, results, ends


def spread(pair: Loaded, seeds: int) -> list[list[object]]:
    """Identity and auto over weight-matching seeds 0..seeds-1 (the order groups are visited
    in): how much objective and barrier move between local optima of the same start."""
    rows = []
    for start in ("identity", "auto"):
        objectives, barriers, kept = [], [], []
        for seed in range(seeds):
            result = pair.match(start, seed)
            objectives.append(result.history[-1])
            barriers.append(pair.barriers(apply_permutation(pair.spec, result.perm, pair.b)
                                          )["test_loss"])
            kept.append(result.info["init"])
            print(f"spread {pair.pair.label} {start} seed {seed}: {objectives[-1]:.6g} "
                  f"{barriers[-1]:.4f} ({kept[-1]})", flush=True)
        bars = torch.tensor(barriers, dtype=torch.float64)
        rows.append([pair.pair.label, start, ", ".join(sorted(set(kept))),
                     f"{min(objectives):.6g} – {max(objectives):.6g}",
                     f"{float(bars.mean()):.4f} ± {float(bars.std()):.4f}",
                     f"{float(bars.min()):.4f} – {float(bars.max()):.4f}"])
    return rows


def verdict(label: str, results: dict[str, tuple]) -> list[object]:
    """One summary row: the default start against the identity start."""
    auto, ident = results["auto"], results["identity"]
    ratio = auto[0] / ident[0]
    delta = auto[1]["test_loss"] - ident[1]["test_loss"]
    return [label, auto[3], f"{ratio:.4f}", f"{ident[1]['test_loss']:.4f}",
            f"{auto[1]['test_loss']:.4f}", f"{delta:+.4f}",
            "yes" if ratio >= 1 else "**no**", "yes" if delta <= 0 else "**no**"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits",
                        help=f"comma-separated: {', '.join(PAIRS)} (default digits)")
    parser.add_argument("--models", help="comma-separated pair keys (default: all of each "
                        "data set's: " + "; ".join(f"{d}: {', '.join(p)}"
                                                   for d, p in PAIRS.items()) + ")")
    parser.add_argument("--epochs", type=int, help="training epochs for every chosen pair "
                        "(default: each pair's own)")
    parser.add_argument("--spread", type=int, default=0, metavar="N",
                        help="also run identity and auto with weight-matching seeds 0..N-1 "
                        "and report the spread of objective and barrier (default: off)")
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    datasets = args.dataset.split(",")
    unknown = [d for d in datasets if d not in PAIRS]
    if unknown:
        parser.error(f"unknown --dataset {', '.join(unknown)}; use {', '.join(PAIRS)}")
    load_before = load_note()
    sections, summary, spreads = [], [], []
    for name in datasets:
        keys = [k for k in (args.models.split(",") if args.models else PAIRS[name])
                if k in PAIRS[name]]
        rows, notes = [], []
        for key in keys:
            pair = PAIRS[name][key]
            loaded = Loaded(pair, args.epochs)
            pair_rows, results, ends = measure(loaded)
            if args.spread > 1:
                spreads += spread(loaded, args.spread)
            rows += pair_rows
            summary.append(verdict(f"{name}: {pair.label}", results))
            scored = (f"{pair.eval_train if pair.eval_train else 'all'} training / "
                      f"{pair.eval_test if pair.eval_test else 'all'} test examples")
            notes.append(f"- `{key}` ({pair.label}): trained {pair.training}; curve of "
                         f"{pair.points} points on {scored}; endpoints: {ends}.")
        sections.append(f"### {name}\n\n" + "\n".join(notes) + "\n\n" + table(
            ["model", "init", "start kept", "objective", "/ identity", "test-loss barrier",
             "test-error barrier (points)", "naive test-loss barrier", "s"], rows))
    spread_text = "" if not spreads else (
        f"\n\n### Spread over weight-matching seeds 0..{args.spread - 1}\n\n"
        "The seed orders the groups coordinate descent visits, so each seed may stop in "
        "another local optimum; barriers as above (test loss).\n\n" + table(
            ["model", "init", "start kept", "objective (min – max)", "barrier mean ± std",
             "barrier min – max"], spreads))
    command = "python bench/weight_starts.py " + " ".join(
        a for a in sys.argv[1:] if not a.startswith("--out") and a != args.out)
    emit(f"## Weight matching starts on trained pairs: {', '.join(datasets)}\n\n"
         f"Machine: {machine()}; {load_before} at the start, {load_note()} at the end "
         f"(shared machine: seconds are not comparable between rows)\n\n"
         f"Command: `{command.strip()}`\n\n"
         "Barriers are of the test split (loss, and error rate in percentage points), the "
         "naive one of the line from A to B unaligned. `start kept`: the start whose result "
         "weight matching kept (for `auto`, the best of identity, sorted, activation).\n\n"
         "Default (`auto`) against identity (paper Algorithm 1):\n\n"
         + table(["pair", "auto kept", "objective / identity", "identity barrier",
                  "auto barrier", "difference", "objective >=", "barrier <="], summary)
         + "\n\n" + "\n\n".join(sections) + spread_text, args.out)


if __name__ == "__main__":
    main()
