"""One rule per ATen op, grouped by family: how each op's output axes relate to its inputs'.

Families: :mod:`.elementwise` (and constants), :mod:`.reduction`, :mod:`.shape`,
:mod:`.indexing`, :mod:`.linalg`, :mod:`.conv` (and pooling), :mod:`.norm`, :mod:`.attention`.
Importing this package registers them all in :data:`RULES`.
"""
from . import attention, conv, elementwise, indexing, linalg, norm, reduction, shape  # noqa: F401
from .registry import IGNORED, RULES, Rule, register_rule

__all__ = ["RULES", "IGNORED", "Rule", "register_rule"]
