"""numba kernels of :mod:`permalign.warm_assignment` (imported only when numba is present).

All maximise ``sim`` (n, n), that is minimise the cost ``-sim`` (read as such, no copy), with
row duals ``u`` (n,), column duals ``v`` (n,) of that cost, and the assignment as ``col4row`` /
``row4col`` (-1: unassigned), updated in place. They release the GIL (weight matching brings the
next group's similarity up to date on another thread meanwhile).
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _row_low(sim, v, i):  # pragma: no cover - compiled
    """``(min over c of -sim[i, c] - v[c], sum of row i)``, in four interleaved lanes (2.5x
    faster than one chain of comparisons at n = 512; the minimum is the same number)."""
    n = sim.shape[0]
    low0 = low1 = low2 = low3 = np.inf
    sum0 = sum1 = sum2 = sum3 = 0.0
    c = 0
    while c + 4 <= n:
        x0, x1, x2, x3 = sim[i, c], sim[i, c + 1], sim[i, c + 2], sim[i, c + 3]
        sum0 += x0
        sum1 += x1
        sum2 += x2
        sum3 += x3
        low0 = min(low0, (-x0) - v[c])
        low1 = min(low1, (-x1) - v[c + 1])
        low2 = min(low2, (-x2) - v[c + 2])
        low3 = min(low3, (-x3) - v[c + 3])
        c += 4
    while c < n:
        sum0 += sim[i, c]
        low0 = min(low0, (-sim[i, c]) - v[c])
        c += 1
    return min(min(low0, low1), min(low2, low3)), (sum0 + sum1) + (sum2 + sum3)


@numba.njit(cache=True, nogil=True)
def _column_lows(sim, u, columns):  # pragma: no cover - compiled
    """``min over r of -sim[r, c] - u[r]`` for each c in ``columns``: gathered for a few
    columns, else over every column in one sequential pass (vectorised: faster from about
    n / 6 columns at n = 512)."""
    n, count = sim.shape[0], len(columns)
    if 6 * count < n:
        low = np.full(count, np.inf)
        for r in range(n):
            for k in range(count):
                x = (-sim[r, columns[k]]) - u[r]
                if x < low[k]:
                    low[k] = x
        return low
    every = np.full(n, np.inf)
    for r in range(n):
        ur = u[r]
        for c in range(n):
            every[c] = min(every[c], (-sim[r, c]) - ur)
    return every[columns]


@numba.njit(cache=True, nogil=True)
def keep_tight(sim, u, v, col4row, row4col):  # pragma: no cover - compiled
    """Set each row's ``u`` to its lowest reduced cost and keep the rows whose assigned column
    has it. Each other row's column is then lowered in reduced cost as far as feasibility
    allows (its ``v`` raised to its lowest ``cost - u`` over the rows): the row keeps it if
    that makes the pair tight, else both are freed. Returns ``(free rows, sum of sim)``: the
    sum is not finite if some entry is not (or if the sum overflows)."""
    n = sim.shape[0]
    free = np.empty(n, dtype=np.int64)
    lost = np.empty(n, dtype=np.int64)  # lost[k]: the column free[k] held
    count = 0
    total = 0.0
    for i in range(n):
        j = col4row[i]
        lowest, row_sum = _row_low(sim, v, i)
        total += row_sum
        u[i] = lowest
        if (-sim[i, j]) - v[j] > lowest:
            free[count] = i
            lost[count] = j
            count += 1
    if count == 0:
        return free[:0], total
    column_low = _column_lows(sim, u, lost[:count])  # (count,)
    kept = 0
    for k in range(count):
        i, j = free[k], lost[k]
        v[j] = column_low[k]  # every reduced cost down column j stays >= 0
        if (-sim[i, j]) - u[i] - v[j] > 0.0:
            row4col[j] = -1
            col4row[i] = -1
            free[kept] = i
            kept += 1
    return free[:kept], total


@numba.njit(cache=True, nogil=True)
def bid(sim, v, col4row, row4col, free, budget):  # pragma: no cover - compiled
    """One pass of augmenting row reduction over the ``free`` rows, at most ``budget`` bids;
    returns the rows still free (displaced owners that met a tie, and those not reached)."""
    n = sim.shape[0]
    free = free.copy()
    total, cur, kept = len(free), 0, 0  # free[:kept]: rows left for augmentation
    while cur < total:
        if budget <= 0:
            for r in range(cur, total):
                free[kept] = free[r]
                kept += 1
            break
        budget -= 1
        i = free[cur]
        cur += 1
        best, second, j1, j2 = np.inf, np.inf, -1, -1
        for j in range(n):
            h = (-sim[i, j]) - v[j]
            if h < second:
                if h >= best:
                    second, j2 = h, j
                else:
                    second, j2 = best, j1
                    best, j1 = h, j
        owner = row4col[j1]
        if j2 >= 0 and best < second:
            v[j1] -= second - best  # j1 now costs row i as much as its second best
        elif owner >= 0 and j2 >= 0:
            j1 = j2  # a tie: take the other column
            owner = row4col[j1]
        if owner >= 0:
            if best < second:
                cur -= 1  # the displaced owner bids next
                free[cur] = owner
            else:
                free[kept] = owner
                kept += 1
            col4row[owner] = -1
        row4col[j1] = i
        col4row[i] = j1
    return free[:kept]


@numba.njit(cache=True, nogil=True)
def _shortest_path(sim, u, v, row4col, start, costs, path, seen_rows, seen_cols
                   ):  # pragma: no cover - compiled
    """Dijkstra over columns from row ``start`` on reduced costs; returns (sink column,
    its distance), sink -1 if none is reachable. Each step scans the columns in order (two
    plain passes over a row, faster here than a list of the columns left)."""
    n = sim.shape[0]
    distance = 0.0
    for k in range(n):
        seen_rows[k] = False
        seen_cols[k] = False
        costs[k] = np.inf
    sink = -1
    i = start
    while sink == -1:
        seen_rows[i] = True
        base = distance - u[i]
        for j in range(n):  # relax every column from row i
            r = base - sim[i, j] - v[j]
            if r < costs[j] and not seen_cols[j]:
                path[j] = i
                costs[j] = r
        lowest, index = np.inf, -1
        for j in range(n):  # the nearest column not reached yet, a free one on ties
            if not seen_cols[j]:
                c = costs[j]
                if c < lowest or (c == lowest and row4col[j] == -1):
                    lowest, index = c, j
        distance = lowest
        if distance == np.inf:
            return -1, distance
        if row4col[index] == -1:
            sink = index
        else:
            i = row4col[index]
        seen_cols[index] = True
    return sink, distance


@numba.njit(cache=True, nogil=True)
def augment_all(sim, u, v, col4row, row4col, free):  # pragma: no cover - compiled
    """Assign every row in ``free`` along a shortest augmenting path, updating the duals;
    False if some row has no finite path."""
    n = sim.shape[0]
    costs = np.empty(n)
    path = np.full(n, -1, dtype=np.int64)
    seen_rows = np.zeros(n, dtype=np.bool_)
    seen_cols = np.zeros(n, dtype=np.bool_)
    for start in free:
        sink, distance = _shortest_path(sim, u, v, row4col, start, costs, path, seen_rows,
                                        seen_cols)
        if sink < 0:
            return False
        u[start] += distance
        for i in range(n):
            if seen_rows[i] and i != start:
                u[i] += distance - costs[col4row[i]]
        for j in range(n):
            if seen_cols[j]:
                v[j] -= distance - costs[j]
        j = sink
        while True:
            i = path[j]
            row4col[j] = i
            col4row[i], j = j, col4row[i]
            if i == start:
                break
    return True
