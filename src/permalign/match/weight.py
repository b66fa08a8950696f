"""Weight matching (Git Re-Basin Algorithm 1): coordinate descent over permutation groups.

For group p the similarity is ``S = sum over members (key, axis) of A_rows @ B_rows.T``, with
model B's other axes already permuted. Each group keeps, per member (a *block*), A's rows
``(n, d)`` and B's rows with the *other* groups' permutations applied (its own axis in B's
original order), each a contiguous tensor of its own, all built at the start by two threads in
turn: S is one product per block, summed in float32 as Algorithm 1 written out does. A weight's
input-axis block needs a copy either way and is kept transposed, ``(d, n)`` (the transpose is
a flag to the BLAS routine, not a copy): a unit of the other group then owns a contiguous slab
of ``post * n`` floats, so moving units is a copy of slabs. An output-axis block is a plain
view of A's tensor (and one gather of B's) and stays as rows; its units are runs of ``post``
floats. When a group's permutation changes, only the blocks of its neighbours that hold a
tensor it touches are marked stale; they are brought up to date when that neighbour is next
solved, by reordering the units the block holds (B's rows under the other group's new
permutation are its old rows in another order: B's tensor is not read again), and the cached
similarity with them, each block the cheaper way (measured, ``COLUMN_COST``): by the moved
units' columns, ``A_cols @ (B_new - B_old)_cols.T``, or by the whole block's change; or the
similarity is recomputed when that costs less than the updates together. While a group's
assignment is solved (on a helper thread: the solvers release the GIL), the next group in the
sweep is brought up to date when its similarity does not depend on the answer.

A group none of whose blocks went stale since its last solve has the same similarity as then, so
solving it again gives the same answer and no progress: it is skipped. This changes nothing in
the search (tested against ``skip_unchanged=False``), and makes the final, confirming sweep
nearly free.

``memory="bounded"`` (chosen by itself when a state dict is lazy, :mod:`permalign.lazy`)
keeps none of these caches: a group's similarity is summed member by member in float64,
``S += A_rows @ permuted(B_rows).T``, each member's tensors loaded (or converted to float32)
when needed and dropped after. Peak memory is then about one member's float32 rows of A and of
B (plus the tensor each is read from, and the gathered copy of B's), plus the ``(n, n)``
float64 similarity and its float32 product: for the largest member of ``R`` rows of ``D``
floats, about ``4 * 4 * R * D + 12 * n**2`` bytes above the inputs' own storage, and nothing in
proportion to the model. It gives the same permutations as the cached mode (tested), and reads
every member's tensors once per solve instead of once.

Every operation runs on one torch thread; only products and copies large enough to gain from
it are split over a few Python threads, which gives the same bits (see :mod:`permalign.threads`).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping
from concurrent.futures import wait
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import distributed, lap
from ..errors import PermalignError, SpecError
from ..lazy import float_view, is_lazy, stubs
from ..permutation import (identity_permutation, on_slice, permute_tensor,
                           random_permutation, selected, unit_view)
from ..spec import Member, Permutation, PermutationSpec
from ..statedict import float_state, permuted_view
from ..threads import (add_products, beside, in_turn, matmul_nt, threads_for_copies,
                       torch_threads)
from .base import MatchResult, Option, default_similarity_key, register, solver_option
from .init import run_from_starts


Others = tuple[tuple[str, Member], ...]


def permuted_rows(tensor: torch.Tensor, member: Member, size: int, others: Others,
                  perm: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``unit_view`` of ``tensor`` after the ``others``' permutations, ``(size, rest)``.

    Plain members gather on the moved view, so the result comes out contiguous in one copy.
    A restricted member (one expert's units) reads only its slice, where only the others on
    the same slice or on the whole tensor act. When a carrier moves the slices (the experts
    themselves permute), the slice read is the one the carrier puts at the member's index.
    """
    if member.select:
        movers = {m.axis: name for name, m in others
                  if not m.select and m.axis in dict(member.select)}
        at = tuple((a, int(perm[movers[a]][i]) if a in movers else i) for a, i in member.select)
        tensor, inside = selected(tensor, dataclasses.replace(member, select=at))
        rest = tuple((n, m) for n, m in others if m.select or m.axis not in movers)
        return permuted_rows(tensor, inside, size, _on_slice(member, rest), perm)
    if member.is_plain and all(m.is_plain and m.axis != member.axis for _, m in others):
        t = tensor.movedim(member.axis, 0)  # (size, *rest): a view
        for name, m in others:
            axis = m.axis + 1 if m.axis < member.axis else m.axis  # its place in the view
            t = torch.index_select(t, axis, perm[name])
        return t.reshape(size, -1)
    return unit_view(permute_tensor(tensor, others, perm), member, size)


def _on_slice(member: Member, others: Others) -> Others:
    """The ``others`` that act on ``member``'s slice, re-expressed on that slice."""
    out = []
    chosen = dict(member.select)
    for name, m in others:
        if any(chosen.get(axis, index) != index for axis, index in m.select):
            continue  # another slice (another expert): does not touch this one
        if m.select and m.select != member.select:
            raise SpecError(f"{m.describe()} and {member.describe()} select different axes "
                            "of one tensor; weight matching supports one selection per tensor")
        out.append((name, on_slice(m, member.select)))
    return tuple(out)


# What updating a cached similarity costs per column of a stale block, in columns of the
# product from scratch (bench/update_costs.py, results/update_costs.md: conv 512 x 512 x 3 x 3
# and linear 512 x 512 blocks in both layouts): by the moved units' columns (three gathers, a
# difference, a copy back and the product over them) 1.8-3.3 when 30-70% of the units moved, up
# to 5 when few did; by the whole block's change (B's rows reordered, their difference, the
# product over the block) 1.3-1.45. A block takes the cheaper way, and the similarity is
# recomputed from scratch when that costs no more than the updates together.
COLUMN_COST = 2.5
BLOCK_COST = 1.4
# Updates by at most this many columns in all are multiplied in float64 straight into the
# cached similarity; larger ones in float32 into a change added to it after (at n = 512 the
# straight way took 0.4-0.7x the time up to 96 columns, 0.86x at 128; bench/update_costs.py).
DIRECT_COLUMNS = 96


@dataclass(frozen=True)
class _Block:
    """One member of a group: its tensor, the members it depends on.

    ``shape4`` is set when exactly one other plain member acts on the tensor (the usual
    weight between two groups): the block's rows then view as ``(pre, units, post)`` over
    that member's units, and a change of a few of them updates the similarity by their columns.
    Such a block is stored ``transposed`` when its own axis is not the tensor's first:
    ``(width, n)``, viewed ``(pre, units, post, n)``; otherwise as rows ``(n, width)``, viewed
    ``(n, pre, units, post)``.
    """

    key: str
    member: Member
    width: int  # columns of the block's rows (n, width)
    others: Others  # every other (group, member) acting on the same tensor
    shape4: tuple[int, int, int] | None = None  # (pre, units of the other group, post)

    @property
    def transposed(self) -> bool:
        """Whether the block is kept transposed, ``(width, n)``: a weight between two groups
        whose own axis is not the tensor's first (its rows need a copy either way, and the
        other group's units then own contiguous slabs). A block on the first axis is a plain
        view of A's tensor (and one gather of B's) as rows."""
        return self.shape4 is not None and self.member.axis != 0

    def rows(self, stored: torch.Tensor) -> torch.Tensor:
        """The block's rows ``(n, width)`` (a view) from how it is stored."""
        return stored.T if self.transposed else stored

    def by_unit(self, stored: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The stored block viewed with the other group's units on one dimension, and that
        dimension: ``([pre,] units, [post,] n)`` if transposed, else ``(n, [pre,] units,
        [post])``; ``pre`` and ``post`` only when above 1 (index_select runs several times
        slower on a view with a dimension of size 1)."""
        pre, units, post = self.shape4
        inner = ((pre,) if pre > 1 else ()) + (units,) + ((post,) if post > 1 else ())
        dim = 1 if pre > 1 else 0
        if self.transposed:
            return stored.view(*inner, stored.shape[1]), dim
        return stored.view(stored.shape[0], *inner), dim + 1

    def flat(self, picked: torch.Tensor) -> torch.Tensor:
        """Rows ``(n, columns)`` (a view) of a :meth:`by_unit` view, or of a selection of its
        units."""
        return picked.reshape(-1, picked.shape[-1]).T if self.transposed else \
            picked.reshape(picked.shape[0], -1)

    def reordered(self, stored: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """A new stored block whose other-group unit ``u`` is ``stored``'s unit ``order[u]``
        (one gather)."""
        view, dim = self.by_unit(stored)
        return view.index_select(dim, order).view(stored.shape)

    def store(self, tensor: torch.Tensor, size: int, perm: Mapping[str, torch.Tensor] | None
              ) -> torch.Tensor:
        """How the block is kept, built from its ``tensor`` in (at most) one copy:
        ``unit_view`` after the other groups' ``perm`` (None: unpermuted), transposed or
        not."""
        if not self.transposed:
            rows = (unit_view(tensor, self.member, size) if perm is None else
                    permuted_rows(tensor, self.member, size, self.others, perm))
            return rows.contiguous()
        if perm is None:
            return tensor.movedim(self.member.axis, -1).reshape(-1, size).contiguous()
        name, other = self.others[0]
        if other.axis > self.member.axis:  # gather runs in B's own layout, then transpose
            gathered = torch.index_select(tensor, other.axis, perm[name])
            return gathered.movedim(self.member.axis, -1).reshape(-1, size).contiguous()
        # the other axis comes first: gather its slabs straight from the moved view
        # (measured both ways on conv and linear weights: each order is faster where used)
        view = tensor.movedim(self.member.axis, -1)  # (*rest, n)
        return torch.index_select(view, other.axis, perm[name]).reshape(-1, size).contiguous()


def _block_shape(tensor: torch.Tensor, member: Member, others: Others
                 ) -> tuple[int, int, int] | None:
    if len(others) != 1 or not member.is_plain or not others[0][1].is_plain:
        return None
    other = others[0][1]
    if other.axis == member.axis:
        return None
    rest = list(tensor.movedim(member.axis, 0).shape[1:])
    axis = (other.axis + 1 if other.axis < member.axis else other.axis) - 1  # place in rest
    pre = int(np.prod(rest[:axis])) if axis else 1
    return pre, rest[axis], int(np.prod(rest[axis + 1:])) if axis + 1 < len(rest) else 1


MEMORY_MODES = ("auto", "cached", "bounded")


class _Matcher:
    """State of one weight-matching run: per-group row matrices, staleness, timers.

    ``sim[g]`` caches group g's similarity (float64) from its last solve; stale blocks update
    it by their change (:meth:`refresh`), or it is recomputed.
    With ``bounded`` there are no row matrices and no cached similarities: ``a`` and ``b``
    are float32 views that convert a tensor when asked, and each similarity is summed member
    by member (:meth:`_summed_similarity`).
    """

    def __init__(self, spec: PermutationSpec, state_a: Mapping[str, torch.Tensor],
                 state_b: Mapping[str, torch.Tensor], perm: Permutation,
                 use_key: Callable[[str], bool], device: torch.device | str | None,
                 solver: str, threads: int, incremental: bool = True,
                 bounded: bool = False) -> None:
        self.spec, self.solver = spec, solver
        self.threads = threads  # what the largest products may use
        self.incremental = incremental
        self.bounded = bounded
        keys = {m.key for g in spec.groups.values() for m in g.members if use_key(m.key)}
        if bounded:
            a, self.b = (float_view(s, [k for k in keys if k in s], device or "cpu")
                         for s in (state_a, state_b))
            where = self.b.device if self.b else None
            shapes = stubs(self.b)  # (no memory)
        else:
            a = float_state({k: state_a[k] for k in keys}, device)
            self.b = float_state({k: state_b[k] for k in keys}, device)
            where = next(iter(self.b.values())).device if self.b else None
            shapes = a
        self.b_device = where if where is not None else torch.device("cpu")
        self.perm = {n: torch.as_tensor(p, dtype=torch.long, device=where)
                     for n, p in perm.items()}
        by_key: dict[str, list[tuple[str, Member]]] = {}
        for n, g in spec.groups.items():
            for m in g.members:
                if m.key in keys:
                    by_key.setdefault(m.key, []).append((n, m))
        self.blocks: dict[str, list[_Block]] = {}
        self.a_rows: dict[str, list[torch.Tensor]] = {}  # per group, per block: _Block.store
        self.b_rows: dict[str, list[torch.Tensor | None]] = {}  # the same, kept up to date
        self.sim: dict[str, torch.Tensor | None] = {}  # (n, n) float64, or None
        self.applied: dict[tuple[str, int], torch.Tensor] = {}  # other's perm in a block
        self.stale: dict[str, set[int]] = {}
        self.dependents: dict[str, list[tuple[str, int]]] = {n: [] for n in spec.groups}
        self.current: dict[str, bool] = {}  # similarity unchanged since the last solve
        for n, g in spec.groups.items():
            blocks = []
            for m in (m for m in g.members if m.key in keys):
                meta = torch.empty(shapes[m.key].shape, device="meta")  # shape only: no copy
                width = unit_view(meta, m, g.size).shape[1]  # rows (n, width)
                others = tuple(e for e in by_key[m.key] if e != (n, m))
                blocks.append(_Block(m.key, m, width, others,
                                     _block_shape(shapes[m.key], m, others)))
                for q in {q for q, _ in others}:
                    self.dependents[q].append((n, len(blocks) - 1))
            self.blocks[n] = blocks
            self.sim[n] = None
            self.stale[n] = set()  # (the bounded mode reads every block at every solve)
            self.current[n] = False
        self.carried = spec.carried()
        # per group, the groups holding a block that it acts on (its similarity's inputs)
        self.neighbours = {p: {q for q, _ in users} for p, users in self.dependents.items()}
        # whether ``auto`` warm-starts some group of this run anyway (lap.choose's ``paid``)
        self.warm_paid = solver == "auto" and any(
            lap.choose(g.size, warm=True) == "jv" for n, g in spec.groups.items()
            if self.blocks[n] and n not in self.carried)
        # independent copies on helper threads: on the CPU only (a CUDA stream is per thread)
        self.copy_threads = threads if self.b_device.type == "cpu" else 1
        if not bounded:
            self._store_all(a)
        # sum <A, pi(B)> is linear in each group's permutation unless a group acts twice on
        # one tensor; then accepted gains add up to the objective and no full pass is needed
        self.linear = all(len({n for n, _ in e}) == len(e) for e in by_key.values())
        self.a = a
        self.value = self.full_objective()
        self.assigners: dict[str, Callable[[np.ndarray], np.ndarray]] = {}  # per group
        self.solves = 0
        self.updates = 0  # similarities brought up to date incrementally
        self.whole_block_updates = 0  # blocks among those updated by their whole change
        self.solved_beside = 0  # solves run beside the next group's similarity update
        self.time_similarity = 0.0
        self.time_solver = 0.0

    def _store_all(self, a: Mapping[str, torch.Tensor]) -> None:
        """Every block's rows of A (unpermuted) and of B (under the starting permutations),
        the largest first, copied by up to ``threads`` threads in turn (none for a carrier
        group: its step reads the tensors, :meth:`solve_carrier`)."""
        jobs, places = [], []
        for name, blocks in self.blocks.items():
            if name in self.carried:
                continue
            size = self.spec.groups[name].size
            for i, block in enumerate(blocks):
                for state, perm in ((a, None), (self.b, self.perm)):
                    jobs.append(functools.partial(block.store, state[block.key], size, perm))
                    places.append((state is a, name, i, block.width * size))
        order = sorted(range(len(jobs)), key=lambda j: -places[j][3])
        stored = in_turn([jobs[j] for j in order], self.copy_threads)
        for name, blocks in self.blocks.items():
            self.a_rows[name] = [None] * len(blocks)
            self.b_rows[name] = [None] * len(blocks)
            for i, block in enumerate(blocks):
                if block.shape4 is not None:
                    self.applied[(name, i)] = self.perm[block.others[0][0]]
        for j, rows in zip(order, stored):
            of_a, name, i, _ = places[j]
            (self.a_rows if of_a else self.b_rows)[name][i] = rows

    def refresh(self, name: str) -> None:
        """Bring group ``name``'s stale blocks up to date, and its cached similarity by their
        change when that is cheaper than recomputing it (else it is recomputed)."""
        if not self.stale[name] or self.bounded:
            return
        stale = sorted(self.stale[name])
        self.stale[name].clear()
        blocks = self.blocks[name]
        moved: dict[int, torch.Tensor | None] = {}  # block -> the other group's moved units
        for i in stale:  # (None: the block is rebuilt whole)
            block = blocks[i]
            moved[i] = None if block.shape4 is None or self.b_rows[name][i] is None else (
                self.applied[(name, i)] != self.perm[block.others[0][0]]).nonzero().flatten()
        rebuild = (not self.incremental or self.sim[name] is None
                   or None in moved.values())  # (a block rebuilt from B's tensor)
        if not rebuild:
            columns = {i: self._by_columns(blocks[i], idx) for i, idx in moved.items()}
            rebuild = sum(0 if not len(idx) else COLUMN_COST * columns[i]
                          or BLOCK_COST * blocks[i].width for i, idx in moved.items()
                          ) >= sum(b.width for b in blocks)
        if rebuild:  # recomputed (a rebuilt block's old rows released before the new are made)
            self.sim[name] = None
            size = self.spec.groups[name].size
            in_turn([functools.partial(self._renew, name, i) for i in stale],
                    threads_for_copies(size * sum(blocks[i].width for i in stale),
                                       self.copy_threads))
            return
        self._update(name, moved, columns)

    def _by_columns(self, block: _Block, units: torch.Tensor) -> int:
        """Columns of an update of ``block`` by the other group's moved ``units``, or 0
        when the whole block's change is cheaper."""
        columns = len(units) * block.shape4[0] * block.shape4[2]
        return columns if COLUMN_COST * columns <= BLOCK_COST * block.width else 0

    def _renew(self, name: str, i: int) -> None:
        """Replace block ``i`` of group ``name``'s rows of B by :meth:`_updated_rows` (a block
        rebuilt from B's tensor releases its old rows first)."""
        old = self.b_rows[name][i]
        if self.blocks[name][i].shape4 is None:
            old = self.b_rows[name][i] = None
        self.b_rows[name][i] = self._updated_rows(name, i, old)

    def _updated_rows(self, name: str, i: int, old: torch.Tensor | None) -> torch.Tensor:
        """Block ``i`` of group ``name`` as B's rows under the current permutations: ``old``
        reordered (B's rows under the other group's new permutation are its old rows in
        another order; B's tensor is not read again), or built afresh."""
        block = self.blocks[name][i]
        if block.shape4 is not None and old is not None:
            other, where = self._catch_up(name, i)
            return block.reordered(old, where[other])
        if block.shape4 is not None:
            self.applied[(name, i)] = self.perm[block.others[0][0]]
        return block.store(self.b[block.key], self.spec.groups[name].size, self.perm)

    def _catch_up(self, name: str, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(the other group's permutation now, where each of its original units sits in
        block i's stored rows until now)``; the block is recorded as following the former."""
        other = self.perm[self.blocks[name][i].others[0][0]]
        where = torch.argsort(self.applied[(name, i)])  # original unit -> place
        self.applied[(name, i)] = other
        return other, where

    def _update(self, name: str, moved: dict[int, torch.Tensor], columns: dict[int, int]
                ) -> None:
        """Add the stale blocks' change to the cached similarity: for a block whose other
        group moved few units (``columns[i]``: :meth:`_by_columns`, 0 for none or for the
        whole block), ``A_cols @ (B_new - B_old)_cols.T`` over those units' columns (and B's
        rows reordered there); for the others, the whole block's ``A_rows @ (B_new -
        B_old).T``. The changes are summed in float32 (as a similarity from scratch), then
        added to the float64 cache; a few columns in all (``DIRECT_COLUMNS``) are multiplied
        in float64 straight into it."""
        blocks = self.blocks[name]
        for i, idx in moved.items():
            if not len(idx):  # its units are where they were
                self.applied[(name, i)] = self.perm[blocks[i].others[0][0]]
        changed = [i for i, idx in moved.items() if len(idx)]
        direct = all(columns[i] for i in changed) and sum(columns.values()) <= DIRECT_COLUMNS
        self.whole_block_updates += sum(not columns[i] for i in changed)
        change = self.sim[name] if direct else torch.zeros_like(self.sim[name],
                                                                dtype=torch.float32)  # (n, n)
        size = self.spec.groups[name].size
        copies = size * sum(columns[i] or blocks[i].width for i in changed)
        threads = threads_for_copies(copies, self.copy_threads)
        for start in range(0, len(changed), threads):  # (a whole block's difference is held
            # until its product: a few at a time)
            # the blocks' copies by the threads in turn, then their products in one hand-out
            factors = in_turn([functools.partial(self._change_of, name, i, moved[i],
                                                 columns[i] > 0)
                               for i in changed[start:start + threads]], threads)
            if direct:
                factors = [(a.double(), diff.double()) for a, diff in factors]
            add_products(factors, self.threads, change)  # (n, c) each
            del factors
        self.updates += 1
        if not direct:
            self.sim[name] += change  # float32 into float64

    def _change_of(self, name: str, i: int, units: torch.Tensor, by_columns: bool
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Bring block ``i`` of group ``name`` up to date (the other group moved ``units``)
        and return ``(A's rows, B_new - B_old)``, ``(n, c)`` each, over the moved units'
        columns or over the whole block."""
        block, rows_b = self.blocks[name][i], self.b_rows[name]
        if by_columns:
            other, where = self._catch_up(name, i)
            stored, dim = block.by_unit(rows_b[i])
            new = stored.index_select(dim, where[other[units]])  # the units now at `units`
            diff = block.flat(new - stored.index_select(dim, units))
            stored.index_copy_(dim, units, new)
            a_units = block.by_unit(self.a_rows[name][i])[0].index_select(dim, units)
            return block.flat(a_units), diff
        old = rows_b[i]
        new = self._updated_rows(name, i, old)
        diff = torch.sub(new, old, out=old)  # B's old rows are a gather of ours: written over
        rows_b[i] = new
        return block.rows(self.a_rows[name][i]), block.rows(diff)

    def similarity(self, name: str) -> np.ndarray:
        """``S[i, j]`` = similarity of A's unit i and B's unit j in group ``name``, (n, n)."""
        if self.bounded:
            start = time.perf_counter()
            out = self._summed_similarity(name).cpu().numpy()
            self.time_similarity += time.perf_counter() - start
            return out
        self.prepare(name)
        return self.sim[name].cpu().numpy()

    def prepare(self, name: str) -> None:
        """Bring group ``name``'s cached similarity up to date (:meth:`refresh`, or from
        scratch)."""
        start = time.perf_counter()
        self.refresh(name)
        if self.sim[name] is None:
            size = self.spec.groups[name].size
            sim = torch.zeros(size, size, device=self.b_device)  # (n, n), float32 sums
            add_products([(block.rows(a), block.rows(b)) for block, a, b in  # (n, d) each
                          zip(self.blocks[name], self.a_rows[name], self.b_rows[name])],
                         self.threads, sim)
            self.sim[name] = sim.double()
        self.time_similarity += time.perf_counter() - start

    def assign_beside(self, sim: np.ndarray, group: str, upcoming: str | None) -> np.ndarray:
        """:meth:`assign` for ``group``, while the main thread brings group ``upcoming``'s
        similarity up to date (:meth:`prepare`; a helper thread solves, and joins the
        preparation's shared-out work once done) when that does not depend on ``group``'s
        answer: ``upcoming`` holds no tensor that ``group`` acts on. The same operations as
        one after the other, so the same result. (The overlap needs a solver that releases the
        GIL: numba's kernels here, SciPy's from 1.12, not ``lap``'s; with another, the two
        take turns. The similarity time then includes waits for the solve.)"""
        if (upcoming in (None, group) or self.bounded or self.threads < 2
                or upcoming in self.carried
                or (self.sim[upcoming] is not None and not self.stale[upcoming])
                or upcoming in self.neighbours[group]):
            return self.assign(sim, group)
        self.solved_beside += 1
        solving = beside(functools.partial(self.assign, sim, group))
        try:
            self.prepare(upcoming)
        except BaseException:
            wait([solving])  # (the preparation's error is the one raised)
            raise
        return solving.result()

    def _summed_similarity(self, name: str) -> torch.Tensor:
        """``sum over members of A_rows @ permuted(B_rows).T`` in float64, (n, n); each
        member's tensors are read and dropped in turn (the bounded mode)."""
        size = self.spec.groups[name].size
        sim = torch.zeros(size, size, dtype=torch.float64, device=self.b.device)
        for block in self.blocks[name]:
            a = unit_view(self.a[block.key], block.member, size)  # (n, d)
            b = permuted_rows(self.b[block.key], block.member, size, block.others,
                              self.perm)  # (n, d)
            sim += matmul_nt(a, b, self.threads).double()
            del a, b
        return sim

    def solve_carrier(self, name: str) -> bool:
        """The nested step of a carrier group (the experts, carrying each expert's units).

        Pairing A's slice ``i`` with B's slice ``j`` is worth the best matching of their slot
        units: ``C[i, j] = <A_i, B_j>`` over the carrier's tensors with the slot units
        unpermuted, minus the slot units' part of that (the trace of ``S_ij``), plus the
        assignment value of ``S_ij``, the slot units' similarity (other groups as they stand).
        One assignment over ``C`` then moves the slices, and each slot takes its pair's best
        unit matching. That is ``E**2`` assignments of the slot size plus one of size ``E``,
        and the slot rows of both models' experts of this carrier in float32 at once (in the
        bounded mode too). Returns whether the objective rose (then every moved permutation is
        set).
        """
        carried, size = self.carried[name], self.spec.groups[name].size
        units = self.spec.groups[carried.slots[0]].size
        start = time.perf_counter()
        raw = torch.zeros(size, size, dtype=torch.float64)  # (E, E): slot units unpermuted
        for block in self.blocks[name]:
            plain_others = tuple((n, m) for n, m in block.others if not m.select)
            raw += matmul_nt(unit_view(self.a[block.key], block.member, size),
                             permuted_rows(self.b[block.key], block.member, size, plain_others,
                                           self.perm), self.threads).double().cpu()
        # slot patterns, in one order for every slot: A's rows of slot i, B's of slice j
        patterns = [sorted(self.blocks[slot], key=lambda b: repr(b.member))
                    for slot in carried.slots]
        a_rows = [torch.cat([unit_view(self.a[b.key], b.member, units) for b in blocks], 1)
                  for blocks in patterns]  # E x (units, D)
        b_rows = []
        for j in range(size):  # slice j of B, read through slot 0's pattern
            parts = []
            for b in patterns[0]:
                at = tuple((a, j) for a, _ in b.member.select)
                plain_others = tuple((n, m) for n, m in b.others
                                     if not m.select and (n != name))
                parts.append(permuted_rows(self.b[b.key], dataclasses.replace(
                    b.member, select=at), units, plain_others, self.perm))
            b_rows.append(torch.cat(parts, 1))  # (units, D)
        self.time_similarity += time.perf_counter() - start
        cost = raw.numpy().copy()
        best: dict[tuple[int, int], np.ndarray] = {}
        old_perm = self.perm[name].cpu().numpy()
        old_value = 0.0
        rows = np.arange(units)
        for i in range(size):
            for j in range(size):
                start = time.perf_counter()
                sim = matmul_nt(a_rows[i], b_rows[j], self.threads).double().cpu().numpy()
                self.time_similarity += time.perf_counter() - start
                best[(i, j)] = self.assign(sim)
                cost[i, j] += sim[rows, best[(i, j)]].sum() - np.trace(sim)
                if j == old_perm[i]:
                    now = self.perm[carried.slots[i]].cpu().numpy()
                    old_value += raw[i, j].item() - np.trace(sim) + sim[rows, now].sum()
        new = self.assign(cost)
        new_value = cost[np.arange(size), new].sum()
        if not new_value > old_value + 1e-9 * max(1.0, abs(old_value)):
            return False
        device = self.perm[name].device
        self.set_perm(name, torch.as_tensor(new, device=device), float(new_value - old_value))
        for i, slot in enumerate(carried.slots):
            self.set_perm(slot, torch.as_tensor(best[(i, int(new[i]))], device=device), 0.0)
        return True

    def assign(self, sim: np.ndarray, group: str | None = None) -> np.ndarray:
        """Best ``perm`` for ``sim`` (n, n); with ``group``, one of that group's successive
        similarities (warm-started from its previous solve, :func:`permalign.lap.assigner`)."""
        start = time.perf_counter()
        if group is None:
            result = lap.solve(sim, self.solver)
        else:
            if group not in self.assigners:
                self.assigners[group] = lap.assigner(self.solver, self.warm_paid)
            result = self.assigners[group](sim)
        self.time_solver += time.perf_counter() - start
        self.solves += 1
        return result

    def set_perm(self, name: str, new: torch.Tensor, gain: float) -> None:
        """Change group ``name``'s permutation (raising the objective by ``gain``) and mark
        the blocks that depend on it stale."""
        self.perm[name] = new
        self.value += gain
        for group, i in self.dependents[name]:
            self.stale[group].add(i)
            self.current[group] = False

    def objective(self) -> float:
        """Sum over matched tensors of <A, pi(B)>."""
        return self.value if self.linear else self.full_objective()

    def full_objective(self) -> float:
        """Sum over matched tensors of <A, pi(B)>, computed from the tensors."""
        if all(torch.equal(p, torch.arange(len(p), device=p.device)) for p in self.perm.values()):
            permuted = self.b  # the identity (Algorithm 1's start) moves nothing: no copies
        else:
            permuted = permuted_view(self.spec.restricted(set(self.b)), self.perm, self.b)
        def dot(key: str) -> float:
            return float(torch.dot(self.a[key].reshape(-1), permuted[key].reshape(-1)))
        threads = 1 if self.bounded else threads_for_copies(  # (lazily read tensors: one)
            sum(t.numel() for t in self.b.values()), self.copy_threads)
        return float(sum(in_turn([functools.partial(dot, k) for k in self.b], threads)))


def weight_matching(spec: PermutationSpec, state_a: Mapping[str, torch.Tensor],
                    state_b: Mapping[str, torch.Tensor], *, seed: int = 0, max_iter: int = 100,
                    init: Permutation | str | None = None,
                    device: torch.device | str | None = None, solver: str = "auto",
                    similarity_keys: Callable[[str], bool] | None = None, restarts: int = 0,
                    model: torch.nn.Module | None = None, inputs: tuple | None = None,
                    input_kwargs: dict | None = None, progress: bool = False,
                    memory: str = "auto") -> MatchResult:
    """Permutation of B's units that maximises sum <W_A, pi(W_B)> (paper Algorithm 1).

    Groups are visited in a fresh random order each sweep (seeded by ``seed``); the loop stops
    after a sweep with no improvement, or after ``max_iter`` sweeps. ``init`` is the starting
    permutation (identity if None: the paper's Algorithm 1), or a start's name (``"identity"``,
    ``"sorted"``, ``"activation"``, ``"auto"``: see :mod:`permalign.match.init`; the
    activation start observes ``model`` on ``inputs``). Products run on ``device`` (default:
    where state_a lives). ``solver`` names the assignment solver (:func:`permalign.lap.solve`;
    ``auto`` by size). ``restarts`` > 0 also runs from that many random starting permutations
    and keeps the run with the highest objective (coordinate descent can stop in a local
    optimum). ``progress`` shows a bar of the groups solved in each sweep (for large models).
    ``memory``: ``cached`` keeps every group's rows of A and B (about 2-4 times the matched
    tensors; fastest), ``bounded`` keeps none and sums each similarity member by member (see
    the module's docstring for its bound), ``auto`` is bounded when either state dict is lazy
    (:mod:`permalign.lazy`) and cached otherwise. Both give the same permutations.
    """
    if memory not in MEMORY_MODES:
        raise PermalignError(f"unknown memory mode {memory!r}; use {', '.join(MEMORY_MODES)}")
    if isinstance(init, str):  # a named start: match/init.py runs it (and maybe others)
        return run_from_starts(lambda perm: weight_matching(
            spec, state_a, state_b, seed=seed, max_iter=max_iter, init=perm, device=device,
            solver=solver, similarity_keys=similarity_keys, restarts=restarts,
            progress=progress, memory=memory), spec, state_a,
            state_b, init, seed=seed, solver=solver, similarity_keys=similarity_keys,
            model=model, inputs=inputs, input_kwargs=input_kwargs)
    if restarts > 0:  # also start from random permutations; keep the best objective
        runs = [weight_matching(spec, state_a, state_b, seed=seed, max_iter=max_iter, init=init,
                                device=device, solver=solver, similarity_keys=similarity_keys,
                                progress=progress, memory=memory)]
        for r in range(restarts):
            start_perm = random_permutation(spec, torch.Generator().manual_seed(seed + 1 + r))
            runs.append(weight_matching(spec, state_a, state_b, seed=seed + 1 + r,
                                        max_iter=max_iter, init=start_perm, device=device,
                                        solver=solver, similarity_keys=similarity_keys,
                                        progress=progress, memory=memory))
        best = max(runs, key=lambda res: res.history[-1] if res.history else float("-inf"))
        best.info["restarts"] = restarts
        return best
    bounded = memory == "bounded" or (memory == "auto" and (is_lazy(state_a)
                                                            or is_lazy(state_b)))
    return _coordinate_descent(spec, state_a, state_b, seed=seed, max_iter=max_iter, init=init,
                               device=device, solver=solver, similarity_keys=similarity_keys,
                               progress=progress, bounded=bounded)


def _coordinate_descent(spec: PermutationSpec, state_a: Mapping[str, torch.Tensor],
                        state_b: Mapping[str, torch.Tensor], *, seed: int, max_iter: int,
                        init: Permutation | None, device: torch.device | str | None,
                        solver: str, similarity_keys: Callable[[str], bool] | None,
                        skip_unchanged: bool = True, incremental: bool = True,
                        progress: bool = False, bounded: bool = False) -> MatchResult:
    """One run of Algorithm 1; ``skip_unchanged=False`` re-solves every group every sweep,
    ``incremental=False`` recomputes every similarity from scratch (both for tests);
    ``progress``: a bar over each sweep's groups (rank 0 only under a process group);
    ``bounded``: no cached rows or similarities (the low-memory mode)."""
    start = time.perf_counter()
    spec.validate(stubs(state_a))  # shapes only: a lazy state is not read here
    spec.validate(stubs(state_b))
    start_name = "identity" if init is None else "given"
    perm = init if init is not None else identity_permutation(spec)
    spec.validate_permutation(perm)
    if device is None:
        device = "cpu" if is_lazy(state_a) else next((v.device for v in state_a.values()),
                                                     "cpu")
    names = list(spec.groups)
    generator = torch.Generator().manual_seed(seed)
    history: list[float] = []
    converged, skipped = False, 0
    threads = torch.get_num_threads()
    bar = tqdm(total=len(names), unit="group", leave=False,
               disable=None if progress and distributed.is_main() else True)
    with bar, torch_threads(1):  # small ops on one thread; large products ask for more
        matcher = _Matcher(spec, state_a, state_b, perm,
                           similarity_keys or default_similarity_key, device, solver, threads,
                           incremental, bounded)
        def draw() -> list[str]:  # a sweep's order of the groups
            return [names[i] for i in torch.randperm(len(names), generator=generator).tolist()]
        order = draw()
        for sweep in range(max_iter):
            improved = False
            bar.reset(total=len(names))
            bar.set_description(f"weight matching sweep {sweep + 1}")
            coming = draw() if sweep + 1 < max_iter else []  # (the same orders, drawn ahead)
            for place, name in enumerate(order):
                bar.update(1)
                if skip_unchanged and matcher.current[name]:
                    skipped += 1  # same similarity as at its last solve: same answer
                    continue
                if name in matcher.carried:  # the experts and their units together
                    improved |= matcher.solve_carrier(name)
                    matcher.current[name] = True
                    continue
                sim = matcher.similarity(name)
                old = matcher.perm[name].cpu().numpy()
                upcoming = (order[place + 1] if place + 1 < len(order)  # next, unless skipped
                            else coming[0] if coming else None)
                new = matcher.assign_beside(sim, name, upcoming)
                matcher.current[name] = True
                rows = np.arange(len(new))
                old_value, new_value = sim[rows, old].sum(), sim[rows, new].sum()
                if new_value > old_value + 1e-9 * max(1.0, abs(old_value)):
                    improved = True
                    matcher.set_perm(name, torch.as_tensor(new, device=matcher.perm[name].device),
                                     float(new_value - old_value))
            history.append(matcher.objective())
            if not improved:
                converged = True
                break
            order = coming
    if not all(np.isfinite(history)):
        raise SpecError("weight matching produced a non-finite objective; check the weights")
    total = time.perf_counter() - start
    info = {"sweeps": len(history), "seed": seed, "solver": solver, "init": start_name,
            "memory": "bounded" if bounded else "cached",
            "solves": matcher.solves, "skipped": skipped, "incremental_updates": matcher.updates,
            "solves_beside_updates": matcher.solved_beside}
    if start_name == "identity":
        info["identity_objective"] = history[-1] if history else matcher.objective()
    return MatchResult(
        perm={n: p.cpu() for n, p in matcher.perm.items()}, method="weight", history=history,
        converged=converged,
        timings={"total": total, "similarity": matcher.time_similarity,
                 "solver": matcher.time_solver},
        info=info)


def matching_objective(spec: PermutationSpec, state_a: Mapping[str, torch.Tensor],
                       state_b: Mapping[str, torch.Tensor], perm: Permutation) -> float:
    """The weight-matching objective sum <W_A, pi(W_B)> of a given permutation."""
    keys = {m.key for g in spec.groups.values() for m in g.members
            if default_similarity_key(m.key)}
    permuted = permuted_view(spec.restricted(keys), perm, state_b)  # one tensor at a time
    return float(sum(torch.dot(state_a[k].double().reshape(-1),
                               permuted[k].double().reshape(-1)) for k in keys))


@register("weight", needs_data=lambda options: options.get("init") == "activation", options=[
    Option("init", str, "auto", "starting point: auto = the best of identity and sorted "
           "weights (and activations when data is given); identity = the paper's Algorithm 1",
           choices=("auto", "identity", "sorted", "activation")),
    Option("max_iter", int, 100, "most coordinate-descent sweeps", minimum=1),
    Option("restarts", int, 0, "extra runs from random starting permutations (best kept)",
           minimum=0),
    Option("start_examples", int, 256, "training inputs the activation start observes",
           minimum=1),
    Option("memory", str, "auto", "cached keeps every group's rows of both models (fastest); "
           "bounded keeps none (peak memory about the largest member's rows); auto: bounded "
           "for lazily read inputs (--low-memory)", choices=MEMORY_MODES),
    solver_option()])
def weight_method(spec: PermutationSpec, state_a: Mapping[str, torch.Tensor],
                  state_b: Mapping[str, torch.Tensor], *, init: str = "auto",
                  model: torch.nn.Module | None = None, data: Any = None, seed: int = 0,
                  device: torch.device | str | None = None, max_iter: int = 100,
                  restarts: int = 0, start_examples: int = 256, solver: str = "auto",
                  progress: bool = False, memory: str = "auto") -> MatchResult:
    """Permutation of B's units maximising sum <W_A, pi(W_B)>, from the best of several starts.

    ``init="identity"`` is the paper's Algorithm 1. With ``data`` the activation start joins
    ``auto``, on the first ``start_examples`` training inputs.
    """
    inputs = (data.train_x[:start_examples],) if data is not None and model is not None \
        else None
    return weight_matching(spec, state_a, state_b, init=init, model=model, inputs=inputs,
                           seed=seed, device=device, max_iter=max_iter, restarts=restarts,
                           solver=solver, progress=progress, memory=memory)
