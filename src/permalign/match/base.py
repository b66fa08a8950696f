"""What every matching method returns, and the registry the CLI and experiments read.

A method is a function ``fn(spec, state_a, state_b, *, <common>, <options>) -> MatchResult``.
``<common>`` are any of ``model``, ``data``, ``seed``, ``device``, ``progress`` (the registry
passes only those the function takes). ``<options>`` are declared at registration as
:class:`Option` objects — name, type, default, help — and must be keyword parameters of the
function with the same defaults; the CLI builds ``permalign align``'s flags from them. Adding a
method means adding one module to this package that calls :func:`register`.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import distributed
from ..errors import PermalignError
from ..permutation import perm_to_json
from ..spec import Permutation, PermutationSpec

COMMON_ARGS = ("model", "data", "seed", "device", "progress")

BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def default_similarity_key(key: str) -> bool:
    """Parameters count in the objective; BatchNorm running statistics do not."""
    return not key.endswith(BUFFER_SUFFIXES)


@dataclass
class MatchResult:
    """A permutation of model B's units onto model A's, and how it was found."""

    perm: Permutation
    method: str
    history: list[float] = field(default_factory=list)  # objective after each sweep / step
    converged: bool = True
    timings: dict[str, float] = field(default_factory=dict)  # seconds, by phase
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "perm": perm_to_json(self.perm), "history": self.history,
                "converged": self.converged, "timings": self.timings, "info": self.info}


@dataclass(frozen=True)
class Option:
    """A user-settable option of a matching method (becomes ``--name`` on ``permalign align``).

    ``minimum`` (inclusive) and ``below`` (exclusive upper bound) are checked for numbers, which
    must also be finite; ``choices`` restricts strings.
    """

    name: str
    type: type
    default: Any
    help: str
    minimum: float | None = None
    below: float | None = None
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any, method: str) -> Any:
        """``value`` converted to the option's type, or a PermalignError saying what is wrong."""
        if value is None and self.default is None:
            return None
        what = f"{self.flag} ({method} matching)"
        try:
            value = self.type(value)
        except (TypeError, ValueError):
            raise PermalignError(f"{what} must be {self.type.__name__}, got {value!r}") from None
        if self.type in (int, float):
            if not math.isfinite(value):
                raise PermalignError(f"{what} must be a finite number, got {value}")
            if self.minimum is not None and value < self.minimum:
                raise PermalignError(f"{what} must be >= {self.minimum:g}, got {value:g}")
            if self.below is not None and value >= self.below:
                raise PermalignError(f"{what} must be < {self.below:g}, got {value:g}")
        if self.choices is not None and value not in self.choices:
            raise PermalignError(f"{what} must be one of {', '.join(self.choices)}, "
                                 f"got {value!r}")
        return value


MatchFunction = Callable[..., MatchResult]


@dataclass(frozen=True)
class Method:
    """A registered matching method: its function, options and whether it needs data."""

    name: str
    function: MatchFunction
    options: tuple[Option, ...]
    data_rule: bool | Callable[[Mapping[str, Any]], bool]  # needs data (given its options)
    summary: str

    @property
    def needs_data(self) -> bool:
        """True if the method always needs training data."""
        return self.data_rule is True

    def needs_data_for(self, options: Mapping[str, Any]) -> bool:
        """True if the method needs training data when run with these options."""
        return bool(self.data_rule(options)) if callable(self.data_rule) else self.data_rule

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Options converted and range-checked; an unknown name is an error naming the valid."""
        checked = {}
        for name, value in options.items():
            option = self.option(name)
            if option is None:
                valid = ", ".join(o.name for o in self.options) or "none"
                raise PermalignError(f"{self.name} matching has no option {name!r} "
                                     f"(its options: {valid})")
            checked[name] = option.check(value, self.name)
        return checked

    def run(self, spec: PermutationSpec, state_a: Mapping[str, Any],
            state_b: Mapping[str, Any], **kwargs: Any) -> MatchResult:
        """Call the method with the common arguments it takes and its checked options.

        ``kwargs`` may hold any of :data:`COMMON_ARGS` and the method's declared options.
        """
        common = {k: kwargs.pop(k) for k in COMMON_ARGS if k in kwargs}
        options = self.check_options(kwargs)
        if self.needs_data_for(options) and (common.get("model") is None
                                             or common.get("data") is None):
            raise PermalignError(f"{self.name} matching needs the model and training data "
                                 "(pass --dataset)")
        accepted = inspect.signature(self.function).parameters
        common = {k: v for k, v in common.items() if k in accepted}
        result = self.function(spec, state_a, state_b, **common, **options)
        result.perm = distributed.broadcast_permutation(result.perm)  # rank 0's on every rank
        return result


METHODS: dict[str, Method] = {}


def register(name: str, *, options: Sequence[Option] = (),
             needs_data: bool | Callable[[Mapping[str, Any]], bool] = False,
             summary: str = "") -> Callable[[MatchFunction], MatchFunction]:
    """Decorator adding a matching method to the registry under ``name``.

    ``needs_data``: whether the method needs the model and training data — True, False, or a
    predicate on the options it is run with (e.g. only for one starting point).

    Each option must be a keyword parameter of the function with the same default (checked
    here, so the declaration and the function cannot drift apart).
    """
    def wrap(fn: MatchFunction) -> MatchFunction:
        params = inspect.signature(fn).parameters
        for option in options:
            param = params.get(option.name)
            if param is None or param.kind is not inspect.Parameter.KEYWORD_ONLY:
                raise TypeError(f"method {name!r}: option {option.name!r} is not a keyword-only "
                                f"parameter of {fn.__name__}")
            if param.default != option.default:
                raise TypeError(f"method {name!r}: option {option.name!r} declares default "
                                f"{option.default!r} but {fn.__name__} has {param.default!r}")
        METHODS[name] = Method(name, fn, tuple(options), needs_data,
                               summary or (inspect.getdoc(fn) or "").split("\n")[0])
        return fn
    return wrap


def get_method(name: str) -> Method:
    """The registered method called ``name``."""
    if name not in METHODS:
        raise PermalignError(f"unknown matching method {name!r}; use one of "
                             f"{', '.join(sorted(METHODS))}")
    return METHODS[name]


def solver_option() -> Option:
    """The assignment-solver option most methods share."""
    from ..lap import SOLVERS
    return Option("solver", str, "auto", "linear-assignment solver (auto: SciPy; weight "
                  "matching's groups of 512+ units warm-started with jv when numba is "
                  "installed; other solves of 2048+ units with LAPJV when lap is)",
                  choices=("auto", *SOLVERS))
