"""How torch work is spread over threads in library loops.

torch parallelises every op above a small size over all its intra-op (OpenMP) threads. For the
many small products and gathers of matching that costs more than it gains, and on a busy machine
it is ruinous: the threads of one op wait for each other (spinning) while another process holds
a core. So library loops run on one intra-op thread (:func:`torch_threads`), and only large
products are cut into fixed blocks of rows that a few Python threads take in turn
(:func:`matmul_nt`), as are independent large copies (:func:`in_turn`). The blocks depend on
the shapes alone, so the result is the same bits whatever the thread count or the machine's
load, and a thread held up by a busy core delays only the block it holds: the others take the
rest.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import torch

# Below this many floating-point operations a product runs on one thread: it takes ~0.1 ms on
# one core (~150 GFLOP/s single-threaded here), the order of what handing work to another
# thread costs. On a loaded 2-core machine a 2-thread OpenMP product of 10 MFLOP measured 5 ms
# against 0.06 ms on one thread.
PARALLEL_FLOPS = 2e7
BLOCK_ROWS = 128  # rows of a product's left factor per block

_pool: ThreadPoolExecutor | None = None


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the enclosed torch ops on ``n`` intra-op threads (restored afterwards)."""
    old = torch.get_num_threads()
    n = max(1, n)
    if n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != old:
            torch.set_num_threads(old)


# Below this many floats copied in all, independent copies run on the calling thread: handing
# jobs to another thread costs ~0.1 ms here, and two index_select gathers of 2**18 floats each
# took 0.74 ms on one thread against 0.55 ms on two.
PARALLEL_ELEMENTS = 2 ** 19


def threads_for_copies(elements: int, available: int) -> int:
    """Threads for independent copies of ``elements`` floats in all: 1 below the threshold."""
    return available if elements >= PARALLEL_ELEMENTS else 1


def _helpers(count: int) -> ThreadPoolExecutor:
    """The shared pool of helper threads (each torch op on one intra-op thread), with at
    least ``count`` of them."""
    global _pool
    if _pool is None or _pool._max_workers < count:
        _pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="permalign",
                                   initializer=torch.set_num_threads, initargs=(1,))
    return _pool


def beside(job: Callable[[], Any]) -> Future:
    """Start ``job`` on a helper thread and return its future. Work the caller then shares
    out (:func:`in_turn`, :func:`matmul_nt`) queues behind it, so that helper joins in once
    ``job`` is done. ``job`` must not share work out itself (it would wait on itself)."""
    return _helpers(1).submit(job)


def in_turn(jobs: Sequence[Callable[[], Any]], threads: int) -> list[Any]:
    """The results of ``jobs``, in order; up to ``threads`` threads (the caller's included)
    take them in turn, so a thread held up by a busy core delays only the job it holds. Each
    job's torch ops run on one intra-op thread (call it under ``torch_threads(1)``)."""
    results: list[Any] = [None] * len(jobs)
    queue = iter(range(len(jobs)))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                index = next(queue, None)
            if index is None:
                return
            results[index] = jobs[index]()
    helpers = min(threads, len(jobs)) - 1
    futures = [_helpers(helpers).submit(work) for _ in range(helpers)] if helpers > 0 else []
    try:
        work()
    finally:  # on an error here, the helpers take no further job; theirs are awaited
        if futures:
            with lock:
                for _ in queue:
                    pass
        for future in futures:
            if not future.cancel():  # (one not started yet, its pool busy elsewhere, e.g.
                future.result()  # with another thread's matching: nothing left to do)
    return results


def matmul_nt(a: torch.Tensor, b: torch.Tensor, threads: int,
              add_to: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b.T`` for ``a`` (n, k) and ``b`` (m, k), or with ``add_to`` (n, m) that sum added
    into it in place (fused, no temporary; returned); large CPU products in blocks of
    :data:`BLOCK_ROWS` rows of ``a`` shared by up to ``threads`` threads (:func:`in_turn`)."""
    if add_to is None:
        if a.device.type != "cpu" or 2.0 * a.shape[0] * b.shape[0] * a.shape[1] < PARALLEL_FLOPS:
            return a @ b.T
        add_to = torch.zeros(a.shape[0], b.shape[0], dtype=torch.result_type(a, b),
                             device=a.device)
    return add_products([(a, b)], threads, add_to)


def add_products(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], threads: int,
                 out: torch.Tensor) -> torch.Tensor:
    """``out += sum of a @ b.T`` over ``pairs`` (each ``a`` (n, k_i), ``b`` (m, k_i); ``out``
    (n, m)), in place, the pairs added in order; returns ``out``. Large CPU sums go in blocks
    of :data:`BLOCK_ROWS` rows of ``out``, each block adding every pair's product in turn, shared
    by up to ``threads`` threads: one hand-out for the whole sum (per pair, the threads would
    wait for each other after every product). The blocks depend on the shapes alone: the same
    bits for any thread count."""
    n = out.shape[0]
    flops = sum(2.0 * n * b.shape[0] * a.shape[1] for a, b in pairs)
    if out.device.type != "cpu" or flops < PARALLEL_FLOPS:
        for a, b in pairs:
            out.addmm_(a, b.T)
        return out

    def block(rows: slice) -> Callable[[], Any]:
        def add() -> None:
            part = out[rows]  # (rows, m)
            for a, b in pairs:
                part.addmm_(a[rows], b.T)
        return add
    in_turn([block(slice(start, min(start + BLOCK_ROWS, n)))
             for start in range(0, n, BLOCK_ROWS)], threads)
    return out
