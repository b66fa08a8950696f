"""What bringing a cached similarity up to date costs, per way, as a share of recomputing it.

Weight matching (``permalign.match.weight``) keeps each group's similarity and, when a
neighbour moves, either updates a stale block by the moved units' columns, or by the whole
block's change, or recomputes the group's product. Its constants ``COLUMN_COST`` and
``BLOCK_COST`` (cost per column of a stale block, in columns of the product from scratch) and
``DIRECT_COLUMNS`` (up to how many columns an update is multiplied in float64 straight into
the similarity) come from this bench. For one block of each kind (a conv and a linear weight,
stored as rows or transposed, as weight matching stores them), it times with the library's own
code paths, on the threads weight matching uses:

* the block's product from scratch, ``A_rows @ B_rows.T`` (2 threads, the row blocks of
  ``threads.matmul_nt``);
* an update by the moved units' columns, for several shares of moved units;
* an update by the whole block's change (reorder, difference, product).

and prints each as a ratio to the product from scratch per column. Then, for a few column
counts, the float64 product straight into a float64 similarity against a float32 product into
a change added after. Every ratio is between timings of the same run.

Run: ``python bench/update_costs.py [--out bench/results/update_costs.md]``
"""
from __future__ import annotations

import argparse
import time

import torch

from _common import emit, load_note, machine, table
from permalign.match.weight import COLUMN_COST, BLOCK_COST, DIRECT_COLUMNS, _Block
from permalign.spec import Member
from permalign.threads import matmul_nt, torch_threads

SHARES = (0.05, 0.1, 0.3, 0.5, 0.7)
KINDS = {  # name: (tensor shape, the group's axis); the other group is the other axis
    "conv 512x512x3x3, input axis (transposed)": ((512, 512, 3, 3), 1),
    "conv 512x512x3x3, output axis (rows)": ((512, 512, 3, 3), 0),
    "linear 512x512, input axis (transposed)": ((512, 512), 1),
    "linear 512x512, output axis (rows)": ((512, 512), 0),
}


def best_ms(fn, repeats: int) -> float:
    """Fastest of ``repeats`` calls, in milliseconds (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def block_of(shape: tuple[int, ...], axis: int) -> _Block:
    other = 1 - axis
    post = 1
    for size in shape[2:]:
        post *= size
    width = shape[other] * post
    return _Block("w", Member("w", axis), width, (("other", Member("w", other)),),
                  (1, shape[other], post))


def costs(shape: tuple[int, ...], axis: int, repeats: int) -> list[object]:
    """[from-scratch ms, whole-block ratio, column ratio per share] for one block kind."""
    generator = torch.Generator().manual_seed(0)
    block = block_of(shape, axis)
    n, units = shape[axis], shape[1 - axis]
    a_rows = block.store(torch.randn(*shape, generator=generator), n, None)
    b_rows = block.store(torch.randn(*shape, generator=generator), n, None).clone()
    sim = torch.zeros(n, n)  # (n, n) float32, as the float32 change of an update
    scratch = best_ms(lambda: matmul_nt(block.rows(a_rows), block.rows(b_rows), 2,
                                        add_to=sim), repeats)
    order = torch.randperm(units, generator=generator)

    spent = torch.empty_like(b_rows)  # weight.py writes the difference over B's old rows

    def whole() -> None:  # as weight.py's _change_of for a whole block, then the product
        new = block.reordered(b_rows, order)
        diff = torch.sub(new, b_rows, out=spent)
        matmul_nt(block.rows(a_rows), block.rows(diff), 2, add_to=sim)
    row = [scratch, best_ms(whole, repeats) / scratch]
    for share in SHARES:
        k = max(1, int(share * units))
        moved = torch.randperm(units, generator=generator)[:k].sort().values
        source = moved[torch.randperm(k, generator=generator)]

        def columns() -> None:  # as weight.py's _change_of by columns, then the product
            stored, dim = block.by_unit(b_rows)
            new = stored.index_select(dim, source)
            diff = block.flat(new - stored.index_select(dim, moved))
            stored.index_copy_(dim, moved, new)
            a = block.flat(block.by_unit(a_rows)[0].index_select(dim, moved))
            matmul_nt(a, diff, 2, add_to=sim)
        row.append(best_ms(columns, repeats) / (scratch * share))
    return row


def direct_costs(n: int, repeats: int) -> list[list[object]]:
    """Rows [n, columns, float64 straight in ms, float32 + addition ms, ratio]."""
    generator = torch.Generator().manual_seed(1)
    sim = torch.zeros(n, n, dtype=torch.float64)
    rows = []
    for count in (8, 32, 64, 96, 128, 256):
        a = torch.randn(n, count, generator=generator)
        d = torch.randn(n, count, generator=generator)

        def straight() -> None:
            matmul_nt(a.double(), d.double(), 2, add_to=sim)

        def via_change() -> None:
            change = torch.zeros(n, n)
            matmul_nt(a, d, 2, add_to=change)
            sim.add_(change)
        s, c = best_ms(straight, repeats), best_ms(via_change, repeats)
        rows.append([n, count, s, c, s / c])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out")
    args = parser.parse_args()
    before = load_note()
    with torch_threads(1):  # as weight matching runs: copies on one thread, products on two
        kinds = [[name] + costs(shape, axis, args.repeats) for name, (shape, axis) in
                 KINDS.items()]
        direct = direct_costs(512, args.repeats) + direct_costs(1024, args.repeats)
    header = (["block", "product from scratch (ms)", "whole-block update / from scratch"]
              + [f"column update, {int(s * 100)}% moved, per column / from scratch"
                 for s in SHARES])
    emit("## Updating a cached similarity: cost per column against recomputing it\n\n"
         f"Machine: {machine()}\n\nLoad: before {before}; after {load_note()}\n\n"
         "Command: `python bench/update_costs.py`\n\n"
         "Best of the repeats for each; copies on one thread, products on two (as weight "
         "matching runs). A ratio of 1 costs as much per column as the product from scratch. "
         f"The library uses COLUMN_COST = {COLUMN_COST} and BLOCK_COST = {BLOCK_COST}: a "
         "block is updated by columns while that costs less than its whole-block update, and "
         "the group is recomputed when the updates together cost more than the product from "
         "scratch.\n\n" + table(header, kinds) + "\n\n"
         f"Small updates: float64 product straight into the float64 similarity against a "
         f"float32 product into a change then added (weight matching goes straight for up to "
         f"DIRECT_COLUMNS = {DIRECT_COLUMNS} columns in all).\n\n"
         + table(["n", "columns", "float64 straight (ms)", "float32 + addition (ms)",
                  "ratio"], direct), args.out)


if __name__ == "__main__":
    main()
