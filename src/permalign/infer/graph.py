"""Walk a ``torch.export`` graph, apply the op rules, and read the spec off the axis classes."""
from __future__ import annotations

import math
import operator
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.fx import Node

from ..errors import SpecError, first_line
from ..spec import Member, PermutationSpec
from .axes import AxisAlgebra, Cat, InferenceError, Term
from .context import Context
from .experts import ExpertTracker
from .rules import IGNORED, RULES


def op_name(node: Node) -> str:
    if node.target is operator.getitem:
        return "getitem"
    target = node.target
    if isinstance(target, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
        return target.name().split(".")[0].replace("::", ".")
    return getattr(target, "__name__", str(target))


def where(node: Node) -> str:
    """``module path (file:line)`` of the code that produced a node, for error messages."""
    stack = node.meta.get("nn_module_stack") or {}
    module = list(stack.values())[-1][0] if stack else "<top level>"
    trace = node.meta.get("stack_trace") or ""
    lines = re.findall(r'File "([^"]+)", line (\d+)', trace)
    source = f"{lines[-1][0]}:{lines[-1][1]}" if lines else "unknown source line"
    return f"module {module or '<top level>'} ({source})"


def bind(node: Node) -> dict[str, Any]:
    """The node's arguments by their schema names (defaults filled in)."""
    if node.target is operator.getitem:
        return {"self": node.args[0], "index": node.args[1]}
    schema = node.target._schema
    bound: dict[str, Any] = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            bound[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            bound[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            bound[arg.name] = arg.default_value
        else:
            bound[arg.name] = None
    return bound


def _structured_leaves(alg: AxisAlgebra, term: Term, offset: int, outer: int, stride: int,
                       inner: int, partial: bool, out: list) -> None:
    """Leaves of an axis term with their place: index = offset + o*stride + p*inner + j."""
    t = alg.normalize(term)
    if isinstance(t, int):
        size = alg.size(t)
        out.append((t, offset, outer, inner, partial, outer == 1 or stride == size * inner))
        return
    if isinstance(t, Cat):
        position = 0
        for part in t.parts:
            _structured_leaves(alg, part, offset + position * inner, outer, stride, inner, True,
                               out)
            position += alg.size(part)
        return
    sizes = [alg.size(p) for p in t.parts]
    for i, part in enumerate(t.parts):
        before, after = math.prod(sizes[:i]), math.prod(sizes[i + 1:])
        part_stride = sizes[i] * after * inner
        if before == 1:
            _structured_leaves(alg, part, offset, outer, stride, after * inner, partial, out)
        elif outer == 1:
            _structured_leaves(alg, part, offset, before, part_stride, after * inner, partial,
                               out)
        elif stride == before * part_stride:
            _structured_leaves(alg, part, offset, outer * before, part_stride, after * inner,
                               partial, out)
        else:
            out.extend((leaf, 0, 0, 0, partial, False) for leaf in alg.leaves(part))


def export_graph(model: nn.Module, args: tuple, kwargs: dict[str, Any]):
    try:
        return torch.export.export(model, args, kwargs=kwargs, strict=False)
    except Exception as exc:  # export raises many types; report one line
        first = first_line(exc)
        raise SpecError(f"torch.export could not trace the model ({type(exc).__name__}: "
                        f"{first}); pass example inputs it accepts") from None


def preserved_leaves(program, outputs: Any) -> set[int] | None:
    """Positions, among the exported program's user outputs (flattened), of the leaves under
    the top-level output entries ``outputs`` names (ModelOutput or dict keys, tuple
    positions: :func:`~permalign.permutation.output_keys`); None (all of them) when
    ``outputs`` is None."""
    from ..permutation import OutputNameError, output_keys
    if outputs is None:
        return None
    tree = program.call_spec.out_spec
    children = list(tree.children() if hasattr(tree, "children") else tree.children_specs)
    if not children:  # one tensor
        raise OutputNameError("the model returns one tensor, so there are no outputs to "
                              "choose; leave out --outputs (outputs=None)")
    keys = list(tree.context) if isinstance(tree.context, list | tuple) and len(
        tree.context) == len(children) else list(range(len(children)))
    spans, start = {}, 0
    for key, child in zip(keys, children):
        spans[key] = range(start, start + child.num_leaves)
        start += child.num_leaves
    chosen: set[int] = set()
    for key in output_keys(keys, outputs):
        if not spans[key]:
            raise OutputNameError(f"output {key!r} holds no tensor, so it cannot be "
                                  "preserved; name an output that does")
        chosen.update(spans[key])
    return chosen


def infer_from_exported(model: nn.Module, program, extra_rules: dict | None = None,
                        outputs: Sequence[str | int] | None = None) -> PermutationSpec:
    """Propagate axes through an exported program and build the spec. Axes of the outputs
    are fixed, only those under ``outputs`` when given (:func:`preserved_leaves`)."""
    keep = preserved_leaves(program, outputs)
    kinds = [o.kind.name for o in program.graph_signature.output_specs]
    rules = {**RULES, **(extra_rules or {})}
    ctx = Context()
    experts = ExpertTracker()
    graph = program.graph
    signature = program.graph_signature
    state = model.state_dict(keep_vars=True)
    aliases: dict[int, list[str]] = {}
    for key, tensor in state.items():
        aliases.setdefault(id(tensor), []).append(key)
    placeholder_keys: dict[Node, list[str]] = {}
    by_tensor: dict[int, Node] = {}  # tied weights: one placeholder per name, one tensor
    input_kinds = {spec.arg.name: spec for spec in signature.input_specs
                   if hasattr(spec.arg, "name")}
    for node in graph.nodes:
        ctx.node, ctx.op = node, op_name(node)
        if node.op == "placeholder":
            ctx.all_outputs()
            spec = input_kinds.get(node.name)
            kind = spec.kind.name if spec else "USER_INPUT"
            target = spec.target if spec else None
            if kind in ("PARAMETER", "BUFFER") and target in state and (
                    kind == "PARAMETER" or getattr(spec, "persistent", True) is not False):
                tied = by_tensor.setdefault(id(state[target]), node)
                if tied is node:
                    placeholder_keys[node] = aliases[id(state[target])]
                    if state[target].is_floating_point():
                        experts.parameter(node, state[target].dim())
                else:
                    for a, b in zip(ctx.terms(tied), ctx.terms(node)):
                        ctx.unify(a, b)
                    experts.tied(tied, node, ctx.terms)
                if not state[target].is_floating_point():  # indices, counts, masks
                    ctx.fix_all(ctx.terms(node) or [], "integer tensor (indices or counts)")
            elif kind == "USER_INPUT":
                for t in ctx.terms(node) or []:
                    ctx.fix(t, "model input")
            else:
                for t in ctx.terms(node) or []:
                    ctx.fix(t, f"tensor outside the state dict ({target})")
            continue
        if node.op == "output":
            user = 0
            for position, leaf in enumerate(torch.utils._pytree.tree_leaves(node.args)):
                is_user = position >= len(kinds) or kinds[position] == "USER_OUTPUT"
                if is_user:
                    user += 1
                if is_user and keep is not None and user - 1 not in keep:
                    continue  # an output the caller does not need preserved
                if isinstance(leaf, Node):
                    for t in ctx.terms(leaf) or []:
                        ctx.fix(t, "model output")
            continue
        if node.op != "call_function":
            raise SpecError(f"unsupported graph node {node.op} {node.target} at {where(node)}")
        name = ctx.op
        if name in IGNORED:
            continue
        if name not in rules:
            raise SpecError(f"no spec-inference rule for op {name} at {where(node)}; register "
                            "one with permalign.infer.register_rule, or simplify that module")
        args = bind(node)
        if experts.select(ctx, node, name, args):  # a constant slice of a parameter
            continue
        try:
            rules[name](ctx, args)
        except SpecError:
            raise
        except (InferenceError, NotImplementedError, KeyError, TypeError, IndexError,
                ValueError) as exc:
            raise SpecError(f"rule for {name} failed at {where(node)}: {exc}") from None
        ctx.all_outputs()  # ops whose rule set nothing still get fresh axes
        experts.step(node, name, args, ctx.values.get)
    return _build_spec(ctx, placeholder_keys, state, experts)


def _build_spec(ctx: Context, placeholder_keys: dict[Node, list[str]],
                state: dict[str, torch.Tensor], experts: ExpertTracker | None = None
                ) -> PermutationSpec:
    alg = ctx.alg
    sliced = experts.reconcile(ctx) if experts is not None else {}
    placed: list[tuple[str, int, list]] = []
    roots: dict[tuple[Node, int], list[int]] = {}  # (placeholder, axis) -> its leaves' roots
    for node, keys in placeholder_keys.items():
        for axis, term in enumerate(ctx.terms(node) or []):
            # (leaf, offset, outer, inner, partial, expressible, select) per piece of the axis
            leaves: list = []
            for select, piece in sliced.get((node, axis), [((), term)]):
                found: list = []
                _structured_leaves(alg, piece, 0, 1, 0, 1, False, found)
                leaves += [(*leaf, (select,) if select else ()) for leaf in found]
            for leaf in leaves:
                if not leaf[5]:
                    alg.fix(leaf[0], "structured axis that a spec member cannot express")
            roots[(node, axis)] = [alg.find(leaf[0]) for leaf in leaves]
            for key in keys:
                placed.append((key, axis, leaves))
    # classes whose units each expert may permute on its own: one group per expert
    split = experts.split_classes(alg, roots) if experts is not None else {}
    order = {k: i for i, k in enumerate(state)}
    placed.sort(key=lambda p: (order.get(p[0], 0), p[1]))
    groups: dict[Any, list[Member]] = {}
    fixed: dict[str, str] = {}
    for key, axis, leaves in placed:
        free = False
        for root, offset, outer, inner, partial, _, picked in leaves:
            root = alg.find(root)
            if alg.size(root) <= 1 or root in alg.fixed:
                continue
            free = True
            cut = None if picked else split.get(root)
            for e in range(cut.experts) if cut else [None]:
                select = ((cut.expert_axis, e),) if cut else picked
                groups.setdefault((root, e), []).append(
                    Member(key, axis, offset, outer, inner, partial, select))
        if not free and state[key].shape[axis] > 1:
            reasons = [alg.fixed.get(alg.find(leaf[0])) for leaf in leaves]
            fixed[f"{key}:{axis}"] = next((r for r in reasons if r), "size-1 units")
    spec = PermutationSpec(fixed=fixed)
    used: set[str] = set()
    for (root, _), members in groups.items():
        first = members[0]
        name = "".join([first.key, *(f"[{a}={i}]" for a, i in first.select), f":{first.axis}"])
        if not first.whole_axis:
            name += f"[offset={first.offset},outer={first.outer},inner={first.inner}]"
        while name in used:
            name += "'"
        used.add(name)
        spec.add_group(name, alg.size(root), members)
    return spec


def infer_spec(model: nn.Module, example_inputs: Any, *,
               example_kwargs: dict[str, Any] | None = None, check: bool = True,
               extra_rules: dict | None = None,
               outputs: Sequence[str | int] | None = None) -> PermutationSpec:
    """Infer the permutation spec of ``model`` from its ``torch.export`` graph.

    ``example_inputs`` (a tensor or tuple) and ``example_kwargs`` are what the model is called
    with. Axes touching inputs or outputs are fixed; ops without a rule raise SpecError naming
    the op and where it came from. With ``check`` the result is verified by :func:`check_spec`.
    Mixture-of-experts layers get a carrier group for the experts axis where a forward pass
    confirms it (:mod:`permalign.infer.carriers`), whatever ``check`` says. ``outputs`` names
    the output entries that must stay unchanged (e.g. ``["logits"]`` of a model called with
    ``output_hidden_states=True`` or ``output_router_logits=True``); the others are free to
    come out permuted. Default: every output.
    ``extra_rules`` adds or overrides op rules for this call (see ``register_rule``).
    """
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    kwargs = dict(example_kwargs or {})
    modes = {m: m.training for m in model.modules()}
    model.eval()  # trace inference behaviour (BatchNorm running stats, no dropout)
    try:
        program = export_graph(model, example_inputs, kwargs)
        spec = infer_from_exported(model, program, extra_rules, outputs)
    finally:
        for module, training in modes.items():
            module.training = training
    spec.validate(model.state_dict())
    if any(m.select for g in spec.groups.values() for m in g.members):
        from .carriers import add_expert_carriers  # experts relabelled with their router
        spec = add_expert_carriers(model, spec, example_inputs, kwargs, outputs)
    if check:
        from ..permutation import check_spec
        check_spec(model, spec, example_inputs, example_kwargs=kwargs, atol=1e-4, rtol=1e-3,
                   outputs=outputs)
    return spec
