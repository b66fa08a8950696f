"""The ``permalign`` command."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import zoo
from .data import DATASET_SHAPES, Dataset, canonical_name, load_dataset
from .errors import PermalignError
from .interpolation import DEFAULT_POINTS, interpolation_curve
from .io import (atomic_write_text, check_writable, load_checkpoint_for, save_state_dict)
from .match import METHODS
from .models import resolve_model
from .provenance import provenance
from .spec import PermutationSpec
from .augment import augmentation_for
from .recipes import DEFAULT_RECIPE, RECIPES, get_recipe
from .train import DEFAULT_EPOCHS, OPTIMIZERS, TrainConfig
from .workflow import align, compare_alignments, train_from_seed, train_seed


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# ------------------------------------------------------------------ shared options
def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"input shape {text!r} must be integers like 1,28,28"
                                         ) from None
    if not shape or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"input shape {text!r} must be positive integers")
    return shape


def _add_model_args(p: argparse.ArgumentParser, *, model_required: bool = True) -> None:
    p.add_argument("--model", required=model_required,
                   help="zoo model string (mlp:depth=3,width=512, resnet20:width=4,norm=ln, ...) "
                   "or your own factory as package.module:function (spec inferred)")
    p.add_argument("--infer", action="store_true",
                   help="infer the spec from the model graph even for zoo models")
    p.add_argument("--dataset", default="digits",
                   help="digits (bundled, default), fashion-mnist, mnist, cifar10, cifar100")
    p.add_argument("--data-dir", help="directory holding the data set's files")
    p.add_argument("--input-shape", type=_shape, help="model input shape, e.g. 1,28,28 "
                   "(default: from --dataset)")
    p.add_argument("--num-classes", type=int, help="number of classes (default: from --dataset)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")


def _add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PermalignError(f"unknown device {name!r}; use cpu, cuda or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PermalignError("--device cuda given but CUDA is not available; use --device cpu")
    return device


def _shape_and_classes(args: argparse.Namespace) -> tuple[tuple[int, ...], int]:
    shape, classes = DATASET_SHAPES[canonical_name(args.dataset)]
    if args.num_classes is not None and args.num_classes < 1:
        raise PermalignError("--num-classes must be >= 1")
    return args.input_shape or shape, args.num_classes or classes


def _model(args: argparse.Namespace, seed: int = 0):
    shape, classes = _shape_and_classes(args)
    return resolve_model(args.model, shape, classes, seed=seed,
                         infer=getattr(args, "infer", False))


def _data(args: argparse.Namespace) -> Dataset:
    data = load_dataset(args.dataset, args.data_dir)
    shape, classes = _shape_and_classes(args)
    if data.input_shape != shape and (len(shape) != 1 or
                                      shape[0] != data.train_x[0].numel()):
        raise PermalignError(f"--input-shape {shape} does not match {args.dataset}'s "
                             f"{data.input_shape}")
    return data


def _load_pair(args: argparse.Namespace, reference: dict[str, torch.Tensor]):
    return [load_checkpoint_for(path, reference) for path in (args.a, args.b)]


def _write_json(path: str | Path, obj: Any, *, force: bool) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, allow_nan=False), force=force)


def _barrier_table(rows: dict[str, dict[str, float]]) -> str:
    header = f"{'method':<12}{'train loss':>12}{'test loss':>12}{'train err':>12}{'test err':>12}"
    lines = ["barriers (loss, and accuracy error as a fraction):", header]
    for name, b in rows.items():
        lines.append(f"{name:<12}{b['train_loss']:>12.4f}{b['test_loss']:>12.4f}"
                     f"{b['train_acc']:>12.4f}{b['test_acc']:>12.4f}")
    return "\n".join(lines)


# ------------------------------------------------------------------ commands
def cmd_demo(args: argparse.Namespace) -> int:
    started = time.time()
    device = _device(args.device)
    zoo.parse_model_string(args.model)
    data = load_dataset(args.dataset, args.data_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path, plot_path = out / "results.json", out / "interpolation.png"
    for path in (results_path, plot_path):
        check_writable(path, force=args.force)
    if args.train_subset:
        data = data.subset(train=args.train_subset)
    model_string = args.model
    epochs = args.epochs or DEFAULT_EPOCHS[canonical_name(args.dataset)]
    states = []
    for seed in (args.seed_a, args.seed_b):
        print(f"training {model_string} on {data.name} from seed {seed} ({epochs} epochs)",
              flush=True)
        states.append(train_from_seed(model_string, data, TrainConfig(epochs=epochs, seed=seed),
                                      device=device, progress=not args.quiet))
    model, spec = resolve_model(model_string, data.input_shape, data.num_classes)
    print("aligning B to A with weight matching and measuring the interpolation curves",
          flush=True)
    curves, matches = compare_alignments(model, spec, states[0], states[1], data, ["weight"],
                                         seed=args.seed, points=args.points, device=device,
                                         progress=not args.quiet)
    barriers = {name: c.barriers() for name, c in curves.items()}
    print(_barrier_table(barriers))
    results = {
        "methods": {name: c.to_json() for name, c in curves.items()},
        "match": {name: {k: v for k, v in m.to_json().items() if k != "perm"}
                  for name, m in matches.items()},
        "provenance": provenance(seeds={"model_a": args.seed_a, "model_b": args.seed_b,
                                        "matching": args.seed}, device=device, started=started,
                                 extra={"model": model_string, "dataset": data.name,
                                        "epochs": epochs,
                                        "train_size": len(data.train_x),
                                        "test_size": len(data.test_x)}),
    }
    from .plot import plot_curves
    plot_curves(curves, plot_path, force=args.force,
                title=f"{model_string} on {data.name}: naive vs weight-matched")
    _write_json(results_path, results, force=args.force)
    print(f"wrote {results_path} and {plot_path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    check_writable(args.out, force=args.force)
    if args.save_init:
        check_writable(args.save_init, force=args.force)
    device = _device(args.device)
    cfg = get_recipe(args.recipe).config(
        dataset=args.dataset, seed=args.seed, epochs=args.epochs, lr=args.lr,
        optimizer=args.optimizer, batch_size=args.batch_size, weight_decay=args.weight_decay)
    _model(args)  # fail on a bad model string before loading data and training
    data = _data(args)
    if args.train_subset:
        data = data.subset(train=args.train_subset)
    print(f"training {args.model} on {data.name} ({len(data.train_x)} examples), recipe "
          f"{cfg.recipe}\nsettings: {cfg.optimizer}, lr {cfg.lr:g}, {cfg.schedule} schedule, weight decay "
          f"{cfg.weight_decay:g}, batch {cfg.batch_size}, {cfg.epochs} epochs, augmentation "
          f"{augmentation_for(data.name, data.input_shape, enabled=cfg.augment).describe()}",
          flush=True)
    run = train_seed(args.model, data, cfg, device=device, progress=not args.quiet)
    model, _ = _model(args)
    model.load_state_dict(run.state)
    from .diagnostics import distance_to_init
    from .evaluate import evaluate
    loss, acc = evaluate(model, data.test_x, data.test_y)
    moved = distance_to_init(run.state, run.initial)
    save_state_dict(run.state, args.out, force=args.force)
    if args.save_init:
        save_state_dict(run.initial, args.save_init, force=args.force)
    print(f"test loss {loss:.4f}, test accuracy {acc:.4f}; weights' cosine to their "
          f"initialisation {moved.cosine:.4f} (moved {moved.relative_distance:.1%} of its norm); "
          f"wrote {args.out}" + (f" and {args.save_init}" if args.save_init else ""))
    return 0


def _method_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name in ("max_iter", "epochs", "lr", "batch_size", "num_examples"):
        value = getattr(args, name, None)
        if value is not None:
            options[name] = value
    return options


def cmd_align(args: argparse.Namespace) -> int:
    started = time.time()
    check_writable(args.out, force=args.force)
    if args.perm_out:
        check_writable(args.perm_out, force=args.force)
    device = _device(args.device)
    model, spec = _model(args)
    if args.spec:
        spec = PermutationSpec.load(args.spec)
    state_a, state_b = _load_pair(args, model.state_dict())
    needs_data = args.method != "weight"
    data = _data(args) if needs_data else None
    aligned, result = align(args.method, spec, model, state_a, state_b, data=data,
                            seed=args.seed, device=device, progress=not args.quiet,
                            **_method_options(args))
    save_state_dict(aligned, args.out, force=args.force)
    if args.perm_out:
        record = result.to_json()
        record["provenance"] = provenance(seeds={"matching": args.seed}, device=device,
                                          started=started)
        _write_json(args.perm_out, record, force=args.force)
    print(f"{args.method} matching: {len(result.history)} steps, objective "
          f"{result.history[-1] if result.history else float('nan'):.6g}; wrote {args.out}")
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    started = time.time()
    for path in (args.out, args.plot):
        if path:
            check_writable(path, force=args.force)
    if args.points < 2:
        raise PermalignError("--points must be at least 2")
    device = _device(args.device)
    model, spec = _model(args)
    state_a, state_b = _load_pair(args, model.state_dict())
    data = _data(args)
    if args.eval_subset:
        data = data.subset(train=args.eval_subset, test=args.eval_subset)
    curve = interpolation_curve(model, state_a, state_b, data, points=args.points,
                                bn_reset=args.bn_reset, repair=args.repair, spec=spec,
                                device=device,
                                progress=not args.quiet)
    print(_barrier_table({"A-B": curve.barriers()}))
    record = curve.to_json()
    record["provenance"] = provenance(seeds={}, device=device, started=started,
                                      extra={"a": str(args.a), "b": str(args.b),
                                             "model": args.model, "dataset": data.name})
    if args.plot:
        from .plot import plot_curves
        plot_curves({"A-B": curve}, args.plot, force=args.force)
    if args.out:
        _write_json(args.out, record, force=args.force)
    return 0


def cmd_spec(args: argparse.Namespace) -> int:
    if args.out:
        check_writable(args.out, force=args.force)
    model, spec = _model(args)
    spec.validate(model.state_dict())
    print(spec.describe())
    if args.out:
        atomic_write_text(args.out, json.dumps(spec.to_json(), indent=1), force=args.force)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    check_writable(args.out, force=args.force)
    if len(args.checkpoints) < 2:
        raise PermalignError("merge needs at least two checkpoints")
    device = _device(args.device)
    model, spec = _model(args)
    reference = model.state_dict()
    states = [load_checkpoint_for(path, reference) for path in args.checkpoints]
    from .interpolation import has_batchnorm, reset_bn_stats
    from .merge import merge_many
    result = merge_many(spec, states, seed=args.seed, device=device)
    merged = result.merged
    if has_batchnorm(model) and not args.no_bn_reset:
        data = _data(args)
        model.load_state_dict(merged)
        reset_bn_stats(model.to(device), data.train_x.to(device))
        merged = model.state_dict()
    save_state_dict(merged, args.out, force=args.force)
    print(f"merged {len(states)} models in {result.rounds} rounds "
          f"({'converged' if result.converged else 'not converged'}); wrote {args.out}")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from .experiments import REGISTRY, ExperimentConfig, run_experiment
    names = list(REGISTRY) if args.name == "all" else [args.name]
    if args.name != "all" and args.name not in REGISTRY:
        raise PermalignError(f"unknown experiment {args.name!r}; use one of "
                             f"{', '.join(REGISTRY)} or all")
    if args.seeds is not None and args.seeds < 1:
        raise PermalignError("--seeds must be >= 1")
    device = _device(args.device)
    root = Path(args.out or ("results-quick" if args.quick else "results"))
    for name in names:
        out = root / name if args.name == "all" or args.out is None else root
        print(f"== experiment {name} -> {out}", flush=True)
        cfg = ExperimentConfig(out=out, quick=args.quick, dataset=args.dataset,
                               data_dir=args.data_dir, seeds=args.seeds, device=device,
                               progress=not args.quiet)
        path = run_experiment(name, cfg)
        record = json.loads(path.read_text())
        tbl = record.get("table")
        if tbl:
            print(" | ".join(tbl["columns"]))
            for row in tbl["rows"]:
                print(" | ".join(str(c) for c in row))
        print(f"wrote {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import render_report
    out = Path(args.out)
    check_writable(out, force=True)
    text = render_report([Path(d) for d in args.dirs], out)
    atomic_write_text(out, text, force=True)
    print(f"wrote {out}")
    return 0


# ------------------------------------------------------------------ parser
def _number(kind: type, bound: float, wording: str, *, strict: bool = False):
    """An argparse type: a finite ``kind`` >= ``bound`` (> ``bound`` if ``strict``)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {wording}") from None
        if not math.isfinite(value) or value < bound or (strict and value == bound):
            raise argparse.ArgumentTypeError(f"{text!r} is not {wording}")
        return value
    parse.__name__ = kind.__name__
    return parse


def _recipe_defaults(setting: str) -> str:
    """``official-mlp 100, official-conv 250, ...``: a setting's value in every recipe."""
    def value(recipe) -> str:
        v = getattr(recipe, setting)
        return "per data set" if v is None else f"{v:g}" if isinstance(v, float) else str(v)
    return ", ".join(f"{r.name} {value(r)}" for r in RECIPES.values())


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="permalign", description="Align and merge neural networks modulo "
                     "permutation symmetries (Git Re-Basin).")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"permalign {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("demo", help="train two MLPs, align them, show the barriers")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir")
    p.add_argument("--model", default="mlp:depth=3,width=512")
    p.add_argument("--out", default="permalign-demo")
    p.add_argument("--epochs", type=int)
    p.add_argument("--train-subset", type=int, help="train on this many examples")
    p.add_argument("--points", type=int, default=DEFAULT_POINTS)
    p.add_argument("--seed-a", type=int, default=0)
    p.add_argument("--seed-b", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="seed of the matching")
    p.add_argument("--device", default="auto")
    _add_output_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a model from a seed and save its state dict",
                       description="Train a model from a seed with a named recipe (any of its "
                       "settings can be overridden) and save its state dict. Recipes: "
                       + "; ".join(r.summary() for r in RECIPES.values())
                       + ". Their sources are in permalign.recipes.")
    _add_model_args(p)
    p.add_argument("--recipe", choices=list(RECIPES), default=DEFAULT_RECIPE,
                   help=f"training preset (default: {DEFAULT_RECIPE})")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the initialisation, shuffling and augmentation (default: 0)")
    p.add_argument("--epochs", type=_number(int, 0, "an integer >= 0"),
                   help="passes over the training data (default: the recipe's; "
                   + _recipe_defaults("epochs") + ")")
    p.add_argument("--optimizer", choices=list(OPTIMIZERS),
                   help="optimiser (default: the recipe's; " + _recipe_defaults("optimizer")
                   + ")")
    p.add_argument("--lr", type=_number(float, 0, "finite and > 0", strict=True),
                   help="peak learning rate (default: the recipe's; " + _recipe_defaults("lr")
                   + ")")
    p.add_argument("--weight-decay", type=_number(float, 0, "finite and >= 0"),
                   help="L2 weight decay (default: the recipe's; "
                   + _recipe_defaults("weight_decay") + ")")
    p.add_argument("--batch-size", type=_number(int, 1, "an integer >= 1"),
                   help="minibatch size (default: the recipe's; "
                   + _recipe_defaults("batch_size") + ")")
    p.add_argument("--train-subset", type=_number(int, 1, "an integer >= 1"),
                   help="train on a seeded random subset of this many examples (default: all)")
    p.add_argument("--out", required=True, help="checkpoint (.pt or .safetensors)")
    p.add_argument("--save-init", metavar="PATH",
                   help="also save the seed's initial state dict (default: not saved)")
    _add_output_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("align", help="permute checkpoint B to line up with checkpoint A")
    p.add_argument("a")
    p.add_argument("b")
    _add_model_args(p)
    p.add_argument("--method", default="weight", choices=sorted(METHODS))
    p.add_argument("--spec", help="permutation spec JSON (default: the zoo model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-iter", type=int, help="weight matching: most sweeps (default 100)")
    p.add_argument("--epochs", type=int, help="ste: passes over the training data (default 1)")
    p.add_argument("--lr", type=float, help="ste: SGD learning rate (default 0.3)")
    p.add_argument("--batch-size", type=int, help="ste: minibatch size (default 128)")
    p.add_argument("--num-examples", type=int,
                   help="activation: training examples to collect statistics on (default all)")
    p.add_argument("--out", required=True, help="aligned B checkpoint")
    p.add_argument("--perm-out", help="write the permutation and its history as JSON")
    _add_output_args(p)
    p.set_defaults(func=cmd_align)

    p = sub.add_parser("interpolate", help="loss/accuracy along the line from A to B")
    p.add_argument("a")
    p.add_argument("b")
    _add_model_args(p)
    p.add_argument("--points", type=int, default=DEFAULT_POINTS)
    p.add_argument("--eval-subset", type=int, help="evaluate on this many examples per split")
    p.add_argument("--bn-reset", action=argparse.BooleanOptionalAction, default=None,
                   help="re-estimate BatchNorm statistics at every point (default: on for BN)")
    p.add_argument("--repair", action="store_true", help="apply REPAIR at interior points")
    p.add_argument("--out", help="curve JSON")
    p.add_argument("--plot", help="curve PNG")
    _add_output_args(p)
    p.set_defaults(func=cmd_interpolate)

    p = sub.add_parser("merge", help="merge two or more checkpoints (MergeMany)")
    p.add_argument("checkpoints", nargs="+")
    _add_model_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-bn-reset", action="store_true",
                   help="skip re-estimating BatchNorm statistics of the merged model")
    p.add_argument("--out", required=True)
    _add_output_args(p)
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("experiment", help="run one of the paper's experiments (or all)")
    p.add_argument("name", help="mlp-barrier, width, epochs, split-merge, merge-many, "
                   "counterexample, planted, or all")
    p.add_argument("--quick", action="store_true", help="small sizes for CI on 2 CPU cores")
    p.add_argument("--dataset", help="default: fashion-mnist")
    p.add_argument("--data-dir")
    p.add_argument("--seeds", type=int, help="number of seed pairs / trials / models")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="output folder (default results[-quick]/NAME)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("report", help="write RESULTS.md from experiment output folders")
    p.add_argument("dirs", nargs="+")
    p.add_argument("--out", default="RESULTS.md")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("spec", help="print (and save) a model's permutation spec")
    _add_model_args(p)
    p.add_argument("--out", help="write the spec as JSON")
    _add_output_args(p)
    p.set_defaults(func=cmd_spec)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PermalignError as exc:
        print(f"permalign: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("permalign: interrupted; no output was written", file=sys.stderr)
        return 130


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
