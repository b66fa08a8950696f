"""Matching methods: each finds a permutation of model B onto model A.

Every module of this package that calls :func:`register` adds a method to :data:`METHODS`
(importing the package imports them all); look one up by name with :func:`get_method` and call
it through :meth:`Method.run`. See :mod:`permalign.match.base` for the common signature.
"""
import importlib
import pkgutil

from .base import METHODS, MatchResult, Method, Option, get_method, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

from .activation import activation_matching  # noqa: E402
from .init import STARTS, run_from_starts  # noqa: E402
from .ste import ste_matching  # noqa: E402
from .weight import weight_matching, weight_method  # noqa: E402

__all__ = ["METHODS", "MatchResult", "Method", "Option", "get_method", "register",
           "weight_matching", "weight_method", "run_from_starts", "STARTS",
           "activation_matching", "ste_matching"]
