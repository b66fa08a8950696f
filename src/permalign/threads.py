"""How many torch threads an operation gets.

torch parallelises every op above a small size over all its intra-op threads. For the many
small products and gathers of matching that costs more than it gains, and on a busy machine it
is ruinous: the threads of one op wait for each other while another process holds a core.
Library loops run their small ops on one thread and only large products on all of them.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

# Below this many floating-point operations a product runs on one thread: it takes ~0.1 ms on
# one core (~150 GFLOP/s single-threaded here), the order of what waking and joining threads
# costs. On a loaded 2-core machine a 2-thread product of 10 MFLOP measured 5 ms against
# 0.06 ms on one thread (threads wait for each other's time slices).
PARALLEL_FLOPS = 2e7


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


def threads_for(flops: float, available: int) -> int:
    """Threads for an op of ``flops`` floating-point operations: 1 below the threshold."""
    return available if flops >= PARALLEL_FLOPS else 1
