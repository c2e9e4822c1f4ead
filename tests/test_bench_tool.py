"""Smoke test of tools/benchmark.py: a tiny model, real workers, the JSON report's fields."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, 'tools', 'benchmark.py')


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True,
                          cwd=REPO, timeout=600, check=False)


def test_benchmark_json_fields():
    proc = _run('--model', 'resnest14', '--batch-size', '2', '--input-size', '32',
                '--classes', '10', '--repetitions', '2', '--iters', '1', '--latency-iters', '1',
                '--compare', 'gluoncv', '--json')
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report['model'] == 'resnest14' and report['batch_size'] == 2
    assert report['input_size'] == 32 and report['mode'] == 'infer'
    assert [r['framework'] for r in report['results']] == ['ours', 'gluoncv']
    for row in report['results']:
        assert row['params'] == report['results'][0]['params'] > 0
        assert len(row['batch_seconds']) == 2
        assert row['images_per_sec'] > 0 and row['latency_ms'] > 0
        assert row['peak_rss_mib'] > 50
    assert set(report['ratios']) == {'gluoncv'} and report['ratios']['gluoncv'] > 0


@pytest.mark.slow
def test_benchmark_torch_and_train():
    torch_py = os.environ.get('GLUON_RESNEST_TORCH_PYTHON') or os.path.join(
        REPO, '.torchvenv', 'bin', 'python')
    if not os.path.isfile(torch_py):
        pytest.skip('no PyTorch virtualenv')
    proc = _run('--model', 'resnest14', '--batch-size', '2', '--input-size', '32',
                '--classes', '10', '--repetitions', '1', '--iters', '1', '--mode', 'train',
                '--compare', 'gluoncv,torch', '--json')
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    params = {r['framework']: r['params'] for r in report['results']}
    assert params['ours'] == params['gluoncv'] == params['torch']
    assert all(r['latency_ms'] is None for r in report['results'])


def test_benchmark_rejects_bad_input():
    proc = _run('--model', 'resnest_nope', '--json')
    assert proc.returncode != 0 and 'unknown model' in proc.stderr
    proc = _run('--model', 'resnest14', '--compare', 'caffe')
    assert proc.returncode != 0 and '--compare' in proc.stderr
