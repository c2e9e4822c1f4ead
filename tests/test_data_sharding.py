"""Sharding of N records over k ranks: equal lengths, covering, disjoint (when k divides N)."""
from __future__ import annotations

import collections

import numpy as np
import pytest

from gluon_resnest.data import allreduce_sum, eval_shard, shard_indices

CASES = [(1, 1), (10, 1), (10, 2), (10, 3), (7, 8), (64, 8), (100, 7), (1001, 16), (1281, 64)]


@pytest.mark.parametrize('n,k', CASES)
@pytest.mark.parametrize('epoch', [0, 3])
def test_train_shards_cover_and_have_equal_length(n: int, k: int, epoch: int):
    shards = [shard_indices(n, r, k, epoch=epoch, seed=5) for r in range(k)]
    per_rank = -(-n // k)
    assert all(len(s) == per_rank for s in shards)
    counts = collections.Counter(i for s in shards for i in s)
    assert set(counts) == set(range(n))  # covering
    assert all(len(set(s)) == len(s) for s in shards if len(s) <= n)  # no repeat within a rank
    duplicates = sum(c - 1 for c in counts.values())
    assert duplicates == per_rank * k - n < k  # padding only, fewer than k
    if n % k == 0:
        assert max(counts.values()) == 1  # disjoint


def test_padding_rule_wraps_the_permutation():
    n, k = 10, 4  # 12 slots: 2 padded
    full = np.concatenate([shard_indices(n, r, k, epoch=2, seed=1) for r in range(k)])
    assert full[n:].tolist() == full[:2].tolist()


def test_shuffle_is_deterministic_and_changes_per_epoch():
    a = shard_indices(1000, 3, 8, epoch=1, seed=0)
    assert a == shard_indices(1000, 3, 8, epoch=1, seed=0)
    assert a != shard_indices(1000, 3, 8, epoch=2, seed=0)
    assert a != shard_indices(1000, 3, 8, epoch=1, seed=1)
    assert shard_indices(10, 1, 2, shuffle=False) == [5, 6, 7, 8, 9]


@pytest.mark.parametrize('n,k', CASES + [(3, 5)])
def test_eval_shards_partition_without_padding(n: int, k: int):
    shards = [eval_shard(n, r, k) for r in range(k)]
    assert sorted(i for s in shards for i in s) == list(range(n))  # each exactly once
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_invalid_arguments():
    with pytest.raises(ValueError, match='rank'):
        shard_indices(10, 2, 2)
    with pytest.raises(ValueError, match='num_records'):
        shard_indices(0, 0, 1)
    with pytest.raises(ValueError, match='world_size'):
        eval_shard(10, 0, 0)


def test_allreduce_sum_without_horovod_is_identity():
    assert allreduce_sum([3, 4.5]).tolist() == [3.0, 4.5]
