"""tools/bench_harness.py: the batch-1 latency of every row comes from a worker started at
batch 1, with real workers on a tiny model."""
from __future__ import annotations

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'tools'))

import bench_harness  # noqa: E402


@pytest.mark.slow
def test_latency_rows_come_from_workers_started_at_batch_one():
    config = bench_harness.BenchConfig(model='resnest14', batch_size=2, input_size=32,
                                       classes=10, repetitions=2, iters=1, latency_iters=1,
                                       threads=1, compare=('gluoncv',))
    report = bench_harness.run_benchmark(config, progress=False)
    assert [r['framework'] for r in report['results']] == ['ours', 'gluoncv']
    for row in report['results']:
        assert len(row['batch_seconds']) == 2 and row['images_per_sec'] > 0
        assert row['latency_ms'] > 0 and row['latency_worker_batch'] == 1
    # At batch 1 the throughput workers time the latency too.
    one = bench_harness.run_benchmark(
        bench_harness.BenchConfig(model='resnest14', batch_size=1, input_size=32, classes=10,
                                  repetitions=1, iters=1, latency_iters=1, threads=1),
        progress=False)
    assert one['results'][0]['latency_worker_batch'] == 1 and one['results'][0]['latency_ms'] > 0
