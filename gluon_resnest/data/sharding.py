"""Splitting a data set across workers (paper §5.1: data sharding, evenly partitioned).

Training shards (:func:`shard_indices`): every epoch one permutation of all records, drawn from
``(seed, epoch)`` and therefore identical on every rank, is padded by wrapping around to a multiple
of the world size and cut into ``world_size`` contiguous blocks of ``ceil(N / world_size)``
records. Each rank reads its block without replacement.

Padding rule: the ``pad = ceil(N/k)*k - N`` (< k) extra slots repeat the first ``pad`` records of
that epoch's permutation, so they land in the last rank(s)' blocks. Shards are therefore disjoint
whenever ``N`` is divisible by ``k``, always cover all ``N`` records, all have the same length, and
at most ``k - 1`` records per epoch are seen twice.

Evaluation shards (:func:`eval_shard`) are contiguous, unpadded and disjoint: rank ``r`` gets
records ``floor(N*r/k) .. floor(N*(r+1)/k) - 1``, so summing per-rank counts (one all-reduce at the
end, see :func:`allreduce_sum`) counts every image exactly once.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

__all__ = ['allreduce_sum', 'eval_shard', 'shard_indices']


def _check(num_records: int, rank: int, world_size: int) -> None:
    if num_records <= 0:
        raise ValueError(f'num_records must be positive, got {num_records}')
    if world_size <= 0:
        raise ValueError(f'world_size must be positive, got {world_size}')
    if not 0 <= rank < world_size:
        raise ValueError(f'rank must be in [0, {world_size}), got {rank}')


def shard_indices(num_records: int, rank: int, world_size: int, epoch: int = 0, seed: int = 0,
                  shuffle: bool = True) -> List[int]:
    """Record positions that ``rank`` reads in ``epoch``.

    Args:
        num_records: records in the data set (N).
        rank: this worker, ``0 <= rank < world_size``.
        world_size: number of workers (k).
        epoch: the epoch; with ``shuffle`` it changes the permutation.
        seed: base seed, the same on every rank.
        shuffle: draw a permutation from ``(seed, epoch)``; otherwise use ``0 .. N-1``.

    Returns:
        ``ceil(N / k)`` positions (see the module docstring for the padding rule).
    """
    _check(num_records, rank, world_size)
    if shuffle:
        order = np.random.default_rng([int(seed), int(epoch)]).permutation(num_records)
    else:
        order = np.arange(num_records)
    per_rank = -(-num_records // world_size)
    total = per_rank * world_size
    if total > num_records:
        order = np.concatenate([order, np.resize(order, total - num_records)])
    return order[rank * per_rank:(rank + 1) * per_rank].tolist()


def eval_shard(num_records: int, rank: int, world_size: int) -> List[int]:
    """Contiguous, unpadded evaluation shard of ``rank`` (sizes differ by at most one)."""
    _check(num_records, rank, world_size)
    start = num_records * rank // world_size
    stop = num_records * (rank + 1) // world_size
    return list(range(start, stop))


def allreduce_sum(values: Sequence[float]) -> np.ndarray:
    """Sum ``values`` over all Horovod workers (the values themselves when Horovod is not running).

    Use it once after the evaluation loop on e.g. ``[correct_top1, correct_top5, count]``: with the
    unpadded shards of :class:`~gluon_resnest.data.ValLoader` every image then counts exactly once.
    """
    array = np.asarray(values, dtype=np.float64)
    try:
        import horovod.mxnet as hvd
        size = hvd.size()
    except (ImportError, ValueError):  # not installed / hvd.init() not called
        return array
    if size == 1:
        return array
    import mxnet as mx
    # One name per length: Horovod keys its negotiation cache on the name.
    total = hvd.allreduce(mx.nd.array(array, dtype='float64'), average=False,
                          name=f'gluon_resnest.allreduce_sum.{array.size}')
    return total.asnumpy()
