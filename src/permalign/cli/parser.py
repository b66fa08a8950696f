"""The ``permalign`` argument parser: one sub-command per task, every option documented."""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from ..interpolation import DEFAULT_POINTS
from ..match import METHODS


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default, unless it has none (None, off) or the help names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is False
                or default is argparse.SUPPRESS
                or action.option_strings == []):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2, defaults in --help."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# ------------------------------------------------------------------ value types
MAX_POINTS = 1000  # interpolation points (each one evaluates the model on both splits)
MAX_SEED = 2**32 - 1  # every seed must also seed NumPy
MAX_EPOCHS = 100_000
MAX_CLASSES = 100_000
MAX_INPUT_ELEMENTS = 2**24  # one example; the spec check and tracing build a batch of two


def integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer within ``[minimum, maximum]``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {value}")
        return value
    return parse


def number(minimum: float, *, strict: bool) -> Callable[[str], float]:
    """An argparse type: a finite number > ``minimum`` (``strict``) or >= ``minimum``."""
    wording = f"{'>' if strict else '>='} {minimum:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"must be a finite number {wording}, got {text!r}")
        return value
    return parse


positive_number = number(0, strict=True)
non_negative_number = number(0, strict=False)


def input_shape(text: str) -> tuple[int, ...]:
    """``1,28,28`` (or ``1x28x28``) as a tuple of positive integers of bounded size."""
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"input shape {text!r} must be integers like 1,28,28"
                                         ) from None
    if not shape or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"input shape {text!r} must be positive integers")
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise argparse.ArgumentTypeError(f"input shape {text!r} has {math.prod(shape)} "
                                         f"elements; at most {MAX_INPUT_ELEMENTS} are supported")
    return shape


SEED = integer(0, MAX_SEED)
COUNT = integer(1)  # sizes of subsets, batches


def output_names(text: str) -> list[str]:
    """``logits,hidden_states`` or ``0,2``: names (or positions) of model outputs."""
    names = [part.strip() for part in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of output "
                                         "names, e.g. logits or 0,1")
    return names  # a key, or a position as digits (resolved against the model's output)


# ------------------------------------------------------------------ shared options
def add_model_args(p: argparse.ArgumentParser, *, spec: bool = False,
                   dataset: str | None = "digits", outputs: bool = True) -> None:
    p.add_argument("--model",
                   help="zoo model string (mlp:depth=3,width=512, resnet20:width=4,norm=ln, ...), "
                   "your own factory as package.module:function, a Hugging Face folder as "
                   "hf:FOLDER, or timm:NAME / torchvision:NAME (spec inferred for all but the "
                   "zoo); may be left out when the first checkpoint is a Hugging Face folder")
    p.add_argument("--infer", action="store_true",
                   help="infer the spec from the model graph even for zoo models")
    if outputs:
        p.add_argument("--outputs", type=output_names, metavar="NAME[,NAME...]",
                       help="the model outputs that must stay unchanged when its spec is "
                       "inferred or checked (keys of a dict or Hugging Face output, e.g. "
                       "logits, or positions of a tuple); the others may come out permuted "
                       "(default: all)")
    if spec:
        p.add_argument("--spec", help="permutation spec JSON to use instead of the model's "
                       "own (checked against the model's outputs first)")
        p.add_argument("--no-spec-check", action="store_true",
                       help="use --spec without checking that it preserves the outputs")
    add_data_args(p, dataset)
    p.add_argument("--input-shape", type=input_shape, help="model input shape, e.g. 1,28,28 "
                   "(default: the data set's)")
    p.add_argument("--num-classes", type=integer(1, MAX_CLASSES),
                   help="number of classes (default: the data set's)")
    add_device_arg(p)


def add_data_args(p: argparse.ArgumentParser, default: str | None = "digits") -> None:
    p.add_argument("--dataset", default=default,
                   help="digits (bundled), fashion-mnist, mnist, cifar10, cifar100, or "
                   "text:FILE (a UTF-8 text file for a language model: next-token loss and "
                   "accuracy)")
    p.add_argument("--data-dir", help="folder holding the data set's files (default: "
                   "$PERMALIGN_DATA/<name>, then /usr/share/datasets/<name>)")


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:N, or auto (cuda if available)")


FORCE_HELP = ("overwrite existing output files (without it an existing file is never "
              "touched; with it or without, outputs appear together or not at all)")


def add_low_memory_arg(p: argparse.ArgumentParser, inputs: str, result: str,
                       when: str) -> None:
    """``--low-memory/--no-low-memory``: lazy inputs, bounded matching, shard-by-shard output."""
    p.add_argument("--low-memory", action=argparse.BooleanOptionalAction, default=None,
                   help=f"read {inputs} lazily (safetensors files or folders: one tensor at a "
                   f"time), match with --memory bounded and write the {result} folder shard by "
                   f"shard; the same result as without it. Default: on{when} when {inputs} "
                   "together hold more than 4 GiB of safetensors weights")


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")


def add_method_args(p: argparse.ArgumentParser) -> None:
    """``--method`` and every registered method's options (each flag says which methods use it)."""
    p.add_argument("--method", default="weight", choices=sorted(METHODS),
                   help="; ".join(f"{m.name}: {m.summary.rstrip('.')}" for m in METHODS.values()))
    group = p.add_argument_group("matching options (each used only by the methods named)")
    seen: dict[str, list[str]] = {}
    kinds: dict[str, type] = {}
    for method in METHODS.values():
        for option in method.options:
            default = "all" if option.default is None else option.default
            seen.setdefault(option.name, []).append(
                f"{method.name}: {option.help} (default {default})")
            kinds[option.name] = option.type
    for name, helps in seen.items():
        group.add_argument("--" + name.replace("_", "-"), dest=f"method_{name}", type=kinds[name],
                           metavar=name.upper(), default=argparse.SUPPRESS,
                           help="; ".join(helps))


# ------------------------------------------------------------------ the parser
VERBOSE_HELP = ("show the libraries' logs, warnings and diagnostics (torch.export's graph dumps, "
                "transformers' warnings); off by default")


def build_parser(commands: dict[str, Callable]) -> argparse.ArgumentParser:
    """The full parser; ``commands`` maps sub-command names to their functions."""
    from .. import __version__
    parser = Parser(prog="permalign", description="Align and merge neural networks modulo "
                    "permutation symmetries (Git Re-Basin).",
                    epilog="Exit codes: 0 done; 2 bad input (one line on stderr, nothing "
                    "written); 130/143/129 interrupted by Ctrl-C/SIGTERM/SIGHUP (nothing "
                    "written).")
    parser.add_argument("--version", action="version", version=f"permalign {__version__}",
                        help="print the version and exit")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser,
                                metavar="COMMAND", title="commands")

    p = sub.add_parser("demo", help="train two MLPs, align them, show the barriers",
                       description="Train two models from different seeds, align B to A with "
                       "weight matching, and write results.json and interpolation.png.")
    add_data_args(p)
    p.add_argument("--model", default="mlp:depth=3,width=512",
                   help="zoo model string to train twice and align")
    p.add_argument("--out", default="permalign-demo",
                   help="output folder for results.json and interpolation.png (created if "
                   "missing)")
    p.add_argument("--epochs", type=integer(0, MAX_EPOCHS),
                   help="training epochs (default: per data set)")
    p.add_argument("--train-subset", type=COUNT,
                   help="train on this many examples (default: all)")
    p.add_argument("--points", type=integer(2, MAX_POINTS), default=DEFAULT_POINTS,
                   help=f"points on each interpolation curve (2 to {MAX_POINTS})")
    p.add_argument("--seed-a", type=SEED, default=0, help="seed of model A")
    p.add_argument("--seed-b", type=SEED, default=1, help="seed of model B")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the matching")
    add_device_arg(p)
    add_output_args(p)

    from ..recipes import DEFAULT_RECIPE, RECIPES, recipe_defaults
    from ..train import OPTIMIZERS
    p = sub.add_parser("train", help="train a model from a seed and save its state dict",
                       description="Train a model from a seed with a named recipe (any of its "
                       "settings can be overridden) and save its state dict. Recipes: "
                       + "; ".join(r.summary() for r in RECIPES.values())
                       + ". Their sources: permalign.recipes.")
    add_model_args(p, outputs=False)
    p.add_argument("--recipe", choices=list(RECIPES), default=DEFAULT_RECIPE,
                   help="training preset")
    p.add_argument("--seed", type=SEED, default=0,
                   help="seed of the initial weights, the batch order and the augmentation")
    p.add_argument("--epochs", type=integer(0, MAX_EPOCHS),
                   help="passes over the training data (default: the recipe's; "
                   + recipe_defaults("epochs") + ")")
    p.add_argument("--optimizer", choices=list(OPTIMIZERS),
                   help="optimiser (default: the recipe's; " + recipe_defaults("optimizer") + ")")
    p.add_argument("--lr", type=positive_number,
                   help="peak learning rate (default: the recipe's; " + recipe_defaults("lr")
                   + ")")
    p.add_argument("--weight-decay", type=non_negative_number,
                   help="L2 weight decay (default: the recipe's; "
                   + recipe_defaults("weight_decay") + ")")
    p.add_argument("--batch-size", type=COUNT,
                   help="minibatch size (default: the recipe's; " + recipe_defaults("batch_size")
                   + ")")
    p.add_argument("--train-subset", type=COUNT,
                   help="train on this many examples (default: all)")
    p.add_argument("--out", required=True, help="checkpoint to write (.pt or .safetensors; "
                   "a folder for hf: models)")
    p.add_argument("--save-init", metavar="PATH",
                   help="also save the seed's initial weights (a state-dict file), so that "
                   "diagnose --init-a/--init-b can say how far training moved them")
    add_output_args(p)

    p = sub.add_parser("align", help="permute checkpoint B to line up with checkpoint A")
    p.add_argument("a", help="checkpoint of model A (the reference; .pt, .safetensors or a "
                   "Hugging Face folder, also written hf:FOLDER)")
    p.add_argument("b", help="checkpoint of model B (the one permuted)")
    add_model_args(p, spec=True)
    add_method_args(p)
    p.add_argument("--seed", type=SEED, default=0, help="seed of the matching")
    p.add_argument("--out", required=True, help="aligned B checkpoint to write (a folder for "
                   "hf: models)")
    p.add_argument("--perm-out", help="also write the permutation and its history as JSON "
                   "(written together with --out)")
    add_low_memory_arg(p, "A and B", "aligned", " for weight matching")
    add_output_args(p)

    p = sub.add_parser("interpolate", help="loss/accuracy along the line from A to B")
    p.add_argument("a", help="checkpoint of model A (λ = 0)")
    p.add_argument("b", help="checkpoint of model B (λ = 1), usually aligned to A first")
    add_model_args(p)
    p.add_argument("--points", type=integer(2, MAX_POINTS), default=DEFAULT_POINTS,
                   help=f"evenly spaced λ values from 0 to 1, both included (2 to {MAX_POINTS})")
    p.add_argument("--eval-subset", type=COUNT,
                   help="evaluate on this many examples per split (default: all)")
    p.add_argument("--bn-reset", action=argparse.BooleanOptionalAction, default=None,
                   help="re-estimate BatchNorm statistics at every point (default: on for BN "
                   "models)")
    p.add_argument("--repair", action="store_true", help="apply REPAIR at interior points")
    p.add_argument("--out", help="curve JSON to write")
    p.add_argument("--plot", help="curve PNG to write (written together with --out)")
    add_output_args(p)

    p = sub.add_parser("merge", help="merge two or more checkpoints (MergeMany)")
    p.add_argument("checkpoints", nargs="+", help="checkpoints of the models to merge (two "
                   "or more files or Hugging Face folders, same --model)")
    add_model_args(p)
    p.add_argument("--seed", type=SEED, default=0, help="seed of the merge's visiting order")
    p.add_argument("--no-bn-reset", action="store_true",
                   help="skip re-estimating BatchNorm statistics of the merged model")
    p.add_argument("--out", required=True, help="merged checkpoint to write (a folder for "
                   "hf: models)")
    add_low_memory_arg(p, "the checkpoints", "merged", "")
    add_output_args(p)

    from ..experiments import REGISTRY, SCALES
    p = sub.add_parser("experiment", help="run one of the paper's experiments (or all)")
    p.add_argument("name", help=f"the experiment: {', '.join(REGISTRY)}, or all")
    p.add_argument("--scale", choices=SCALES, default="full",
                   help="quick: CI smoke test on 2 CPU cores; full: what RESULTS.md reports "
                   "(CPU-sized); paper: the paper's sizes (GPU)")
    p.add_argument("--quick", dest="scale", action="store_const", const="quick",
                   help="same as --scale quick")
    add_data_args(p, default=None)
    p.add_argument("--seeds", type=integer(1, 1000), help="number of seed pairs / trials / "
                   "models (default: per experiment)")
    add_device_arg(p)
    p.add_argument("--out", help="output folder (default: results/NAME, results-SCALE/NAME "
                   "for other scales); trained checkpoints are cached under it")
    add_output_args(p)

    p = sub.add_parser("report", help="write RESULTS.md from experiment output folders")
    p.add_argument("dirs", nargs="+", help="experiment output folders, each holding a "
                   "results.json (or a folder of such folders)")
    p.add_argument("--out", default="RESULTS.md", help="markdown file to write")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)

    p = sub.add_parser("diagnose", help="why is my alignment or merge bad? spec coverage, "
                       "function check, planted self-test, objective, correlations, barriers, "
                       "hints")
    p.add_argument("a", help="checkpoint of model A (file or Hugging Face folder)")
    p.add_argument("b", help="checkpoint of model B")
    add_model_args(p, spec=True, dataset=None)
    add_method_args(p)
    p.add_argument("--init-a", help="model A's initial weights (checkpoint), to measure how "
                   "far training moved them")
    p.add_argument("--init-b", help="model B's initial weights (checkpoint)")
    p.add_argument("--points", type=integer(2, MAX_POINTS), default=11,
                   help="points on each interpolation curve (with --dataset)")
    p.add_argument("--eval-subset", type=COUNT, default=2000,
                   help="examples per split for correlations and barriers (with --dataset)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the matching and the tests")
    p.add_argument("--out", help="also write the report as JSON")
    add_output_args(p)

    p = sub.add_parser("spec", help="print (and save) a model's permutation spec")
    add_model_args(p)
    p.add_argument("--out", help="write the spec as JSON")
    add_output_args(p)

    for name, choice in sub.choices.items():
        choice.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                            help=VERBOSE_HELP)
        choice.set_defaults(func=commands[name])
    return parser
