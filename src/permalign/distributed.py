"""Data-parallel passes on ``torch.distributed``: shards, all-reduced sums, one writer.

When a process group is initialised (``torchrun``, or ``torch.distributed.init_process_group``
in the caller's script) and holds more than one process, every data pass (activation
statistics, BatchNorm re-estimation, REPAIR statistics, evaluation) runs on a disjoint shard of
the data on each rank, and the float64 sums, cross-moments and counts (or loss/accuracy sums)
are all-reduced, so every rank ends with the statistics of the whole data. Rank 0 solves the
assignments and broadcasts the permutation; only rank 0 writes files (:mod:`permalign.output`).

Without a process group (or with one process) every function here is the identity, so the
library behaves exactly as in one process. :func:`local` switches the data-parallel passes
off for a block (code that runs on one rank only must not enter a collective).

Every rank must make the same collective calls in the same order; all functions that reduce
are called by the library at the same points on every rank, with the same data.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .errors import PermalignError

T = TypeVar("T")


class RankZeroFailed(PermalignError):
    """Raised on the other ranks when a step that runs on rank 0 only (:func:`on_main`)
    failed there with a user error: rank 0 reports it; the others exit quietly."""
_DISABLED = [0]  # depth of local() blocks


def active() -> bool:
    """True when a process group with more than one process is initialised (and not inside
    :func:`local`)."""
    return (not _DISABLED[0] and dist.is_available() and dist.is_initialized()
            and dist.get_world_size() > 1)


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Processes in the group (1 without a process group, or inside :func:`local`)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on rank 0, the rank that solves assignments and writes outputs (and always
    without a process group)."""
    return rank() == 0


@contextlib.contextmanager
def local() -> Iterator[None]:
    """Inside the block every pass runs on this rank's whole data, with no collectives."""
    _DISABLED[0] += 1
    try:
        yield
    finally:
        _DISABLED[0] -= 1


def owns(index: int) -> bool:
    """True if the ``index``-th of a sequence of whole items (batches) is this rank's: ranks
    take turns (always True without a group)."""
    return not active() or index % dist.get_world_size() == dist.get_rank()


def shard_bounds(n: int) -> tuple[int, int]:
    """``[start, stop)`` of this rank's contiguous share of ``n`` items (sizes differ by at
    most one; rank order is data order, so concatenating the shards gives the whole)."""
    size, r = world_size(), rank() if active() else 0
    return r * n // size, (r + 1) * n // size


def shard(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """This rank's share of each tensor along axis 0 (the whole tensor without a group).

    All tensors must have the same length. A PermalignError if there are fewer rows than
    processes (some rank would see no data).
    """
    if not active():
        return tensors
    n = len(tensors[0])
    if any(len(t) != n for t in tensors):
        raise ValueError("tensors to shard differ in length")
    if n < world_size():
        raise PermalignError(f"{n} examples cannot be shared by {world_size()} processes; "
                             "use more examples or fewer processes")
    start, stop = shard_bounds(n)
    return tuple(t[start:stop] for t in tensors)


def all_reduce_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the ranks, in place (unchanged without a group); returns it."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_sums(*values: torch.Tensor | float | int) -> list[torch.Tensor]:
    """Sum several scalars or tensors over the ranks in one collective (as float64, on the
    first tensor's device); returns them in their shapes."""
    tensors = [torch.as_tensor(v).double() for v in values]
    if not active():
        return tensors
    device = next((v.device for v in values if isinstance(v, torch.Tensor)), None)
    flat = torch.cat([t.reshape(-1).to(device) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    out, at = [], 0
    for t in tensors:
        out.append(flat[at:at + t.numel()].view(t.shape))
        at += t.numel()
    return out


def reduce_moments(moments: Mapping[str, Any]) -> None:
    """All-reduce the sums and counts of :class:`~permalign.stats.ChannelMoments` or
    :class:`~permalign.stats.CrossMoments`, in place, in one collective (order of the
    mapping's keys, the same on every rank)."""
    if not active():
        return
    parts: list[Any] = []  # (object, attribute) whose tensor or count is summed
    for m in moments.values():
        for channel in ((m.a, m.b) if hasattr(m, "cross") else (m,)):
            if channel.total is None:
                raise PermalignError("a rank saw no data for a statistic; use more examples "
                                     "or fewer processes")
            parts += [(channel, "total"), (channel, "total_sq"), (channel, "count")]
        if hasattr(m, "cross"):
            parts.append((m, "cross"))
    values = [getattr(obj, attr) for obj, attr in parts]
    for (obj, attr), value, summed in zip(parts, values, all_reduce_sums(*values)):
        if attr == "count":
            setattr(obj, attr, int(round(float(summed))))
        else:
            setattr(obj, attr, summed.to(value.dtype).view(value.shape))


def broadcast_object(value: T) -> T:
    """Rank 0's ``value`` on every rank (``value`` itself without a group)."""
    if not active():
        return value
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_permutation(perm: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rank 0's permutation (group -> index tensor) on every rank, on each tensor's device."""
    if not active():
        return dict(perm)
    shared = broadcast_object({k: v.cpu() for k, v in perm.items()} if is_main() else None)
    return {k: v.to(perm[k].device) if k in perm else v for k, v in shared.items()}


def on_main(fn, *args: Any, **kwargs: Any):
    """``fn(*args, **kwargs)`` computed on rank 0 only, its result broadcast to every rank.

    ``fn`` must not enter a collective (it runs on one rank): it runs inside :func:`local`.
    An exception on rank 0 reaches every rank: a user error as :class:`RankZeroFailed`
    (a PermalignError), anything else as a RuntimeError.
    """
    if not active():
        return fn(*args, **kwargs)
    result: Any = None
    failure: BaseException | None = None
    if is_main():
        try:
            with local():
                result = fn(*args, **kwargs)
        except Exception as exc:  # every rank must still reach the broadcast
            failure = exc
    outcome = broadcast_object((result, None if failure is None else
                                (isinstance(failure, PermalignError), str(failure))))
    if failure is not None:
        raise failure
    result, error = outcome
    if error is not None:
        user, text = error
        raise (RankZeroFailed if user else RuntimeError)(f"rank 0 failed: {text}")
    return result


def average_gradients(params: list[torch.Tensor], weight: float) -> None:
    """Replace each gradient g_r by sum_r weight_r * g_r (``weight``: this rank's share of
    the global batch), in one collective; a missing gradient counts as zero."""
    if not active():
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads]) * weight
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    at = 0
    for p, g in zip(params, grads):
        p.grad = flat[at:at + g.numel()].view_as(g).to(g.dtype)
        at += g.numel()


def barrier() -> None:
    """Wait for every rank (nothing without a group)."""
    if active():
        dist.barrier()


def init_from_env() -> bool:
    """Initialise the default process group from ``torchrun``'s environment (``WORLD_SIZE``
    > 1, ``RANK``, ``MASTER_ADDR``...) if it is not already: gloo for CPU tensors, and NCCL
    for CUDA tensors where CUDA is available (each rank on GPU ``LOCAL_RANK``). Returns True
    if this call initialised it (the caller should then :func:`shutdown`)."""
    if not dist.is_available() or dist.is_initialized():
        return False
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend=backend)
    return True


def shutdown() -> None:
    """Destroy the default process group (if one is initialised)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
