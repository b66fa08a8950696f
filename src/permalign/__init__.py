"""permalign: align and merge neural networks modulo their permutation symmetries."""
from __future__ import annotations

__version__ = "0.1.0"

from .api import align, merge
from .errors import PermalignError
from .infer import infer_spec
from .interpolation import Curve, barrier, interpolation_curve
from .match import METHODS, MatchResult, get_method, weight_matching
from .permutation import (apply_permutation, check_spec, identity_permutation, invert,
                          random_permutation)
from .spec import Member, PermutationSpec

interpolate = interpolation_curve  # permalign.interpolate(model, state_a, state_b, data, ...)

__all__ = ["__version__", "align", "merge", "PermalignError", "PermutationSpec", "Member", "apply_permutation",
           "check_spec", "identity_permutation", "invert", "random_permutation", "infer_spec",
           "weight_matching", "MatchResult", "METHODS", "get_method", "interpolate",
           "interpolation_curve", "Curve", "barrier"]
