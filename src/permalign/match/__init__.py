"""Matching methods: each finds a permutation of model B onto model A.

Every method has the signature ``fn(spec, state_a, state_b, *, model, data, seed, device,
**options)`` and returns a :class:`MatchResult`; look them up by name with :func:`get_method`.
"""
from .activation import activation_matching
from .base import METHODS, MatchResult, get_method, register
from .init import STARTS, run_from_starts, weight_method
from .ste import ste_matching
from .weight import weight_matching

__all__ = ["METHODS", "MatchResult", "get_method", "register", "weight_matching",
           "activation_matching", "ste_matching", "weight_method", "run_from_starts", "STARTS"]
