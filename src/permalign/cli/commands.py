"""The ``permalign`` sub-commands: each resolves its inputs once and calls the library.

Every command runs inside one output transaction (:mod:`.run`): it declares the files it will
write first (``output.declare``: checked before any work), and everything it writes through
:mod:`permalign.io` appears together when it returns, or not at all.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from .. import output, zoo
from ..data import canonical_name, is_text, load_dataset
from ..errors import PermalignError
from ..evaluate import evaluate
from ..interpolation import interpolation_curve
from ..augment import augmentation_for
from ..diagnostics import distance_to_init, objective_change
from ..io import atomic_write_text, save_state_dict
from ..match import METHODS, get_method
from ..merge import merge_many
from ..models import resolve_model
from ..provenance import provenance
from ..recipes import get_recipe
from ..statedict import has_batchnorm
from ..train import DEFAULT_EPOCHS, TrainConfig, train_run
from ..workflow import align, align_and_compare, train_from_seed
from .inputs import check_output, parse_device, resolve_inputs, wants_low_memory


def _write_json(path: str | Path, obj: Any, *, force: bool) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, allow_nan=False), force=force)


def _barrier_table(rows: dict[str, dict[str, float]]) -> str:
    header = f"{'method':<12}{'train loss':>12}{'test loss':>12}{'train err':>12}{'test err':>12}"
    lines = ["barriers (loss, and accuracy error as a fraction):", header]
    for name, b in rows.items():
        lines.append(f"{name:<12}{b['train_loss']:>12.4f}{b['test_loss']:>12.4f}"
                     f"{b['train_acc']:>12.4f}{b['test_acc']:>12.4f}")
    return "\n".join(lines)


def _method_options(args: argparse.Namespace) -> dict[str, Any]:
    """The matching options given on the command line; each must belong to ``--method``."""
    method = get_method(args.method)
    given = {k[len("method_"):]: v for k, v in vars(args).items() if k.startswith("method_")}
    for name in given:
        if method.option(name) is None:
            users = [m.name for m in METHODS.values() if m.option(name) is not None]
            raise PermalignError(f"--{name.replace('_', '-')} is an option of "
                                 f"{' and '.join(users)} matching, not of {args.method}")
    return method.check_options(given)


# ------------------------------------------------------------------ commands
def cmd_demo(args: argparse.Namespace) -> int:
    started = time.time()
    device = parse_device(args.device)
    zoo.parse_model_string(args.model)
    data = load_dataset(args.dataset, args.data_dir)
    out = output.make_dir(args.out, "--out")
    results_path = output.declare(out / "results.json", "--out")
    plot_path = output.declare(out / "interpolation.png", "--out")
    if args.train_subset:
        data = data.subset(train=args.train_subset)
    epochs = args.epochs if args.epochs is not None else DEFAULT_EPOCHS[canonical_name(
        args.dataset)]
    states = []
    for seed in (args.seed_a, args.seed_b):
        print(f"training {args.model} on {data.name} from seed {seed} ({epochs} epochs)",
              flush=True)
        states.append(train_from_seed(args.model, data, TrainConfig(epochs=epochs, seed=seed),
                                      device=device, progress=not args.quiet))
    model, spec = resolve_model(args.model, data.input_shape, data.num_classes)
    print("aligning B to A with weight matching and measuring the interpolation curves",
          flush=True)
    comparison = align_and_compare(model, spec, states[0], states[1], data, ["weight"],
                                   seed=args.seed, points=args.points, device=device,
                                   progress=not args.quiet)
    print(_barrier_table(comparison.barriers()))
    results = {
        "methods": {name: c.to_json() for name, c in comparison.curves.items()},
        "match": {name: {k: v for k, v in m.to_json().items() if k != "perm"}
                  for name, m in comparison.matches.items()},
        "provenance": provenance(seeds={"model_a": args.seed_a, "model_b": args.seed_b,
                                        "matching": args.seed}, device=device, started=started,
                                 extra={"model": args.model, "dataset": data.name,
                                        "epochs": epochs,
                                        "train_size": len(data.train_x),
                                        "test_size": len(data.test_x)}),
    }
    from ..plot import plot_curves
    plot_curves(comparison.curves, plot_path, force=args.force,
                title=f"{args.model} on {data.name}: naive vs weight-matched")
    _write_json(results_path, results, force=args.force)
    return 0


def _default_epochs(dataset: str) -> int:
    """Training epochs when ``--epochs`` is not given: per data set (1 for text)."""
    return 1 if is_text(dataset) else DEFAULT_EPOCHS[canonical_name(dataset)]


def cmd_train(args: argparse.Namespace) -> int:
    started = time.time()
    check_output(args, args.out)
    output.declare(args.save_init, "--save-init")
    recipe = get_recipe(args.recipe)
    epochs = args.epochs
    if epochs is None and recipe.epochs is None:
        epochs = _default_epochs(args.dataset)
    cfg = recipe.config(dataset=args.dataset if not is_text(args.dataset) else "digits",
                        seed=args.seed, epochs=epochs, lr=args.lr, optimizer=args.optimizer,
                        batch_size=args.batch_size, weight_decay=args.weight_decay)
    inputs = resolve_inputs(args, need_data=True, need_spec=False, model_seed=args.seed)
    data, model = inputs.data, inputs.model
    if args.train_subset:
        data = data.subset(train=args.train_subset)
    augment = augmentation_for(data.name, data.input_shape, enabled=cfg.augment)
    print(f"training {args.model or inputs.folder} on {data.name} ({len(data.train_x)} "
          f"examples), recipe {cfg.recipe}: {cfg.optimizer}, lr {cfg.lr:g} ({cfg.schedule}), "
          f"weight decay {cfg.weight_decay:g}, batch {cfg.batch_size}, {cfg.epochs} epochs, "
          f"augmentation {augment.describe()}", flush=True)
    run = train_run(model, data, cfg, device=inputs.device, progress=not args.quiet)
    loss, acc = evaluate(model, data.test_x.to(inputs.device), data.test_y.to(inputs.device),
                         task=data.task)
    moved = distance_to_init(run.state, run.initial)
    inputs.save(model.state_dict(), args.out, force=args.force,
                title=f"{Path(args.out).name}: trained by permalign",
                summary=f"The model of `{args.model}` trained by `permalign train` on "
                f"{data.name} for {cfg.epochs} epochs (recipe {cfg.recipe}, seed {args.seed}).",
                details={"data": data.name, "recipe": cfg.recipe, "epochs": cfg.epochs,
                         "optimizer": cfg.optimizer, "learning rate": cfg.lr,
                         "weight decay": cfg.weight_decay, "batch size": cfg.batch_size,
                         "test loss": f"{loss:.4f}", "test accuracy": f"{acc:.4f}"},
                provenance=provenance(seeds={"training": args.seed}, device=inputs.device,
                                      started=started))
    if args.save_init:
        save_state_dict(run.initial, args.save_init, force=args.force)
    print(f"test loss {loss:.4f}, test accuracy {acc:.4f}; weights' cosine to their "
          f"initialisation {moved.cosine:.4f} (moved {moved.relative_distance:.1%} of its norm)")
    return 0


def cmd_align(args: argparse.Namespace) -> int:
    started = time.time()
    check_output(args, args.out, [args.a, args.b])
    output.declare(args.perm_out, "--perm-out")
    options = _method_options(args)
    lazy = wants_low_memory(args.low_memory if args.method == "weight" else
                            args.low_memory or False, [args.a, args.b])
    if lazy and args.method != "weight":
        raise PermalignError(f"--low-memory works with weight matching only, not "
                             f"{args.method} (which runs the model on data)")
    if lazy and options.get("init") == "activation":
        raise PermalignError("--low-memory cannot use --init activation (it runs the model "
                             "with each checkpoint's weights); use auto, identity or sorted")
    inputs = resolve_inputs(args, checkpoints=[args.a, args.b],
                            need_data=get_method(args.method).needs_data_for(options),
                            lazy=lazy)
    state_a, state_b = inputs.states
    aligned, result = align(args.method, inputs.spec, inputs.model, state_a, state_b,
                            data=inputs.data, seed=args.seed, device=inputs.device,
                            progress=not args.quiet, **options)
    change = objective_change(inputs.spec, state_a, state_b, result.perm)
    record = result.to_json()
    record["objective_change"] = change.to_json()
    record["provenance"] = provenance(seeds={"matching": args.seed}, device=inputs.device,
                                      started=started)
    objective = result.history[-1] if result.history else float("nan")
    inputs.save(aligned, args.out, force=args.force,
                title=f"{Path(args.out).name}: model B aligned to model A",
                summary=f"Model B (`{args.b}`) with its hidden units permuted by permalign's "
                f"{args.method} matching to line up with model A (`{args.a}`). A permutation "
                "does not change what the model computes: this model gives B's outputs, and "
                "its weights can now be interpolated or averaged with A's.",
                details={"model A": args.a, "model B": args.b, "method": args.method,
                         "options": options or "defaults", "seed": args.seed,
                         "permutation groups": len(inputs.spec.groups),
                         "objective": f"{objective:.6g}"},
                provenance=record["provenance"])
    if args.perm_out:
        _write_json(args.perm_out, record, force=args.force)
    start = f" from the {result.info['init']} start" if "init" in result.info else ""
    objective = f"{result.history[-1]:.6g}" if result.history else "not computed"
    print(f"{args.method} matching{start}: {len(result.history)} steps, objective {objective}")
    if result.info.get("unobserved"):
        unseen = result.info["unobserved"]
        print(f"{len(unseen)} groups observed nowhere, matched by sorted weights: "
              f"{', '.join(unseen[:3])}{' ...' if len(unseen) > 3 else ''}")
    print(f"weight-matching objective before {change.before:.6g}, after {change.after:.6g} "
          f"(cosine of A and B's weights {change.cosine_before:.4f} -> {change.cosine_after:.4f})")
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    started = time.time()
    output.declare(args.out, "--out")
    output.declare(args.plot, "--plot")
    inputs = resolve_inputs(args, checkpoints=[args.a, args.b], need_data=True,
                            need_spec=args.repair)
    data = inputs.data
    if args.eval_subset:
        data = data.subset(train=args.eval_subset, test=args.eval_subset)
    curve = interpolation_curve(inputs.model, *inputs.states, data, points=args.points,
                                bn_reset=args.bn_reset, repair=args.repair, spec=inputs.spec,
                                device=inputs.device, progress=not args.quiet)
    print(_barrier_table({"A-B": curve.barriers()}))
    record = curve.to_json()
    record["provenance"] = provenance(seeds={}, device=inputs.device, started=started,
                                      extra={"a": str(args.a), "b": str(args.b),
                                             "model": args.model, "dataset": data.name})
    if args.plot:
        from ..plot import plot_curves
        plot_curves({"A-B": curve}, args.plot, force=args.force)
    if args.out:
        _write_json(args.out, record, force=args.force)
    return 0


def cmd_spec(args: argparse.Namespace) -> int:
    output.declare(args.out, "--out")
    inputs = resolve_inputs(args)
    print(inputs.spec.describe())
    if args.out:
        atomic_write_text(args.out, json.dumps(inputs.spec.to_json(), indent=1),
                          force=args.force)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    started = time.time()
    check_output(args, args.out, args.checkpoints)
    if len(args.checkpoints) < 2:
        raise PermalignError("merge needs at least two checkpoints")
    lazy = wants_low_memory(args.low_memory, args.checkpoints)
    inputs = resolve_inputs(args, checkpoints=args.checkpoints,
                            need_data=lambda model: has_batchnorm(model) and not args.no_bn_reset,
                            lazy=lazy)
    result = merge_many(inputs.spec, inputs.states, seed=args.seed, device=inputs.device,
                        model=inputs.model, bn_reset=not args.no_bn_reset,
                        bn_data=inputs.data.train_x if inputs.data is not None else None)
    inputs.save(result.merged, args.out, force=args.force,
                title=f"{Path(args.out).name}: {len(inputs.states)} models merged",
                summary=f"The average of {len(inputs.states)} models after permalign aligned "
                "their hidden units to each other (MergeMany: each model weight-matched to "
                "the mean of the others until nothing changes).",
                details={"models": ", ".join(map(str, args.checkpoints)),
                         "rounds": result.rounds, "converged": result.converged,
                         "BatchNorm statistics re-estimated": result.bn_reset,
                         "seed": args.seed},
                provenance=provenance(seeds={"merge": args.seed}, device=inputs.device,
                                      started=started))
    print(f"merged {len(inputs.states)} models in {result.rounds} rounds "
          f"({'converged' if result.converged else 'not converged'}"
          f"{', BatchNorm statistics re-estimated' if result.bn_reset else ''})")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    """Each experiment commits its own outputs (an ``all`` run keeps the finished ones)."""
    from ..experiments import REGISTRY, ExperimentConfig, run_experiment
    names = list(REGISTRY) if args.name == "all" else [args.name]
    if args.name != "all" and args.name not in REGISTRY:
        raise PermalignError(f"unknown experiment {args.name!r}; use one of "
                             f"{', '.join(REGISTRY)} or all")
    device = parse_device(args.device)
    if args.dataset is not None:
        canonical_name(args.dataset)
    root = Path(args.out or ("results" if args.scale == "full" else f"results-{args.scale}"))
    for name in names:
        out = root / name if args.name == "all" or args.out is None else root
        print(f"== experiment {name} -> {out}", flush=True)
        with output.transaction(force=args.force, join=False) as txn:
            txn.make_dir(out, "--out")
            for earlier in [out / "results.json", *sorted(out.glob("*.png"))]:
                txn.declare(earlier, "--out")  # an earlier run's files: refused before work
            cfg = ExperimentConfig(out=out, scale=args.scale, dataset=args.dataset,
                                   data_dir=args.data_dir, seeds=args.seeds, device=device,
                                   progress=not args.quiet, force=args.force)
            path = run_experiment(name, cfg)
        record = json.loads(path.read_text())
        tbl = record.get("table")
        if tbl:
            print(" | ".join(tbl["columns"]))
            for row in tbl["rows"]:
                print(" | ".join(str(c) for c in row))
        print(f"wrote {', '.join(map(str, txn.committed))}", flush=True)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..report import render_report
    out = output.declare(args.out, "--out")
    text = render_report([Path(d) for d in args.dirs], out)
    atomic_write_text(out, text, force=args.force)
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    from ..diagnose import diagnose
    started = time.time()
    output.declare(args.out, "--out")
    options = _method_options(args)
    inits = [p for p in (args.init_a, args.init_b) if p]
    method = get_method(args.method)
    if method.needs_data_for(options) and not args.dataset:
        raise PermalignError(f"{args.method} matching needs data; pass --dataset")
    inputs = resolve_inputs(args, checkpoints=[args.a, args.b, *inits],
                            need_data=bool(args.dataset))
    states = iter(inputs.states)
    state_a, state_b = next(states), next(states)
    init_a = next(states) if args.init_a else None
    init_b = next(states) if args.init_b else None
    report = diagnose(inputs.model, inputs.spec, state_a, state_b, inputs.example.args,
                      inputs.example.kwargs, data=inputs.data, init_a=init_a, init_b=init_b,
                      method=args.method, method_options=options, seed=args.seed,
                      points=args.points, eval_examples=args.eval_subset,
                      device=inputs.device, outputs=args.outputs)
    print(report.table())
    if args.out:
        record = report.to_json()
        record["provenance"] = provenance(seeds={"matching": args.seed}, device=inputs.device,
                                          started=started,
                                          extra={"a": str(args.a), "b": str(args.b),
                                                 "model": args.model,
                                                 "dataset": args.dataset})
        _write_json(args.out, record, force=args.force)
    return 0


COMMANDS = {"demo": cmd_demo, "diagnose": cmd_diagnose, "train": cmd_train, "align": cmd_align,
            "interpolate": cmd_interpolate, "merge": cmd_merge, "experiment": cmd_experiment,
            "report": cmd_report, "spec": cmd_spec}
