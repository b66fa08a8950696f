"""permalign: align and merge neural networks modulo their permutation symmetries."""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import PermalignError
from .match import METHODS, MatchResult, get_method, weight_matching
from .spec import (Member, PermutationSpec, apply_permutation, check_spec, identity_permutation,
                   invert, random_permutation)

__all__ = ["__version__", "PermalignError", "PermutationSpec", "Member", "apply_permutation",
           "check_spec", "identity_permutation", "invert", "random_permutation",
           "weight_matching", "MatchResult", "METHODS", "get_method"]
