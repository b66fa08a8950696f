"""Automatic permutation specs from a model's ``torch.export`` graph.

``infer_spec(model, example_inputs)`` traces the model, propagates axis identity through every
ATen op with one rule per op (see :mod:`permalign.infer.rules`, written against :class:`~permalign.infer.context.Context`), and returns a
:class:`~permalign.spec.PermutationSpec` whose groups are the axes that may be permuted together.
"""
from .axes import AxisAlgebra, Cat, InferenceError, Prod
from .context import Context
from .graph import infer_spec
from .rules import RULES, register_rule

__all__ = ["infer_spec", "register_rule", "RULES", "Context", "AxisAlgebra", "Prod", "Cat",
           "InferenceError"]
