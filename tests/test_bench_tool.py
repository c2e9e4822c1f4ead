"""Smoke test of tools/benchmark.py: a tiny model, real workers, the JSON report's fields."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tools_cli import load_tool

from gluon_resnest import native

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
    proc = _run('--model', 'resnest14', '--compare', 'openvino', '--mode', 'train')
    assert proc.returncode != 0 and 'inference only' in proc.stderr


def test_benchmark_onnxruntime_runs_our_onnx_export():
    proc = _run('--model', 'resnest14', '--batch-size', '2', '--input-size', '32',
                '--classes', '10', '--repetitions', '2', '--iters', '1', '--latency-iters', '1',
                '--compare', 'onnxruntime', '--threads', '1', '--json')
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    ours, peer = report['results']
    assert (peer['framework'], peer['dtype']) == ('onnxruntime', 'float32')
    assert peer['params'] == ours['params'] > 0
    assert 'ORT_ENABLE_ALL' in peer['setting'] and '1 intra-op threads' in peer['setting']
    assert 'oneDNN' in ours['setting']
    # fast_inference's graph: its stem convolutions (16 x 16 maps, 32 tiles) run as Winograd
    # on AVX-512 CPUs, and the setting says so.
    with open('/proc/cpuinfo', encoding='utf-8') as info:
        avx512 = ' avx512f ' in info.read()
    if native.fast_inference_available():
        assert ('Winograd' in ours['setting']) is avx512, ours['setting']
    assert len(peer['batch_seconds']) == 2 and peer['latency_ms'] > 0
    assert set(report['ratios']) == {'onnxruntime'}


@pytest.mark.slow
def test_benchmark_all_peers_table():
    """Every peer row, OpenVINO's three included, in the printed table (needs make ov-env)."""
    pythons = [os.environ.get('GLUON_RESNEST_TORCH_PYTHON') or
               os.path.join(REPO, '.torchvenv', 'bin', 'python'),
               os.environ.get('GLUON_RESNEST_OPENVINO_PYTHON') or
               os.path.join(REPO, '.ovvenv', 'bin', 'python')]
    if not all(os.path.isfile(p) for p in pythons):
        pytest.skip('no PyTorch or OpenVINO virtualenv')
    proc = _run('--model', 'resnest14', '--batch-size', '2', '--input-size', '32',
                '--classes', '10', '--repetitions', '1', '--iters', '1', '--latency-iters', '1',
                '--compare', 'gluoncv,torch,onnxruntime,openvino')
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split('|')[1:-1] for line in proc.stdout.splitlines()
            if line.startswith('| ') and 'implementation' not in line]
    got = [(cells[0].strip(), cells[1].strip()) for cells in rows]
    assert got == [('gluon_resnest', 'float32'), ('GluonCV', 'float32'),
                   ('PyTorch (resnest.torch)', 'float32'), ('onnxruntime (our ONNX)', 'float32'),
                   ('OpenVINO (our ONNX)', 'float32'), ('OpenVINO (our ONNX)', 'default'),
                   ('OpenVINO (our ONNX)', 'int8')]
    settings = [cells[-1] for cells in rows]
    assert 'precision hint f32 (runs f32)' in settings[4]
    assert 'default precision' in settings[5] and 'NNCF' in settings[6]
    assert all(float(cells[7]) > 0 for cells in rows)  # batch-1 latency for every row
    for name in ('gluoncv', 'torch', 'onnxruntime', 'openvino', 'openvino-default',
                 'openvino-int8'):
        assert f'ours / {name}: ' in proc.stdout


def test_benchmark_all_precisions():
    """--dtype all: one table per precision, each with batch-N throughput and batch-1 latency;
    our bfloat16 row says which path it ran."""
    import inspect

    from gluon_resnest.deploy.fast_inference import fast_inference

    proc = _run('--model', 'resnest14', '--batch-size', '2', '--input-size', '32',
                '--classes', '10', '--repetitions', '2', '--iters', '1', '--latency-iters', '1',
                '--compare', 'gluoncv', '--threads', '1', '--dtype', 'all', '--json')
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report['dtype'] == 'all' and list(report['modes']) == ['float32', 'bfloat16', 'int8']
    rows = {mode: [(r['framework'], r['dtype']) for r in sub['results']]
            for mode, sub in report['modes'].items()}
    assert rows == {'float32': [('ours', 'float32'), ('gluoncv', 'float32')],
                    'bfloat16': [('ours', 'bfloat16')], 'int8': [('ours', 'int8')]}
    for sub in report['modes'].values():
        assert sub['batch_size'] == 2
        for row in sub['results']:
            assert row['images_per_sec'] > 0 and row['latency_ms'] > 0
            assert len(row['batch_seconds']) == 2
    fp32 = report['modes']['float32']
    assert set(fp32['ratios']) == set(fp32['latency_ratios']) == {'gluoncv'}
    want = fp32['results'][1]['latency_ms'] / fp32['results'][0]['latency_ms']
    assert abs(fp32['latency_ratios']['gluoncv'] - want) < 1e-9
    bf16 = report['modes']['bfloat16']['results'][0]['setting']
    native_bf16 = 'dtype' in inspect.signature(fast_inference).parameters
    assert ('AMP' in bf16) is not (native_bf16 and "dtype='bfloat16'" in bf16), bf16
    load_tool('benchmark')  # puts tools/ on sys.path
    from bench_harness import format_table
    text = format_table(report)
    heads = [line for line in text.splitlines() if line.startswith('### ')]
    assert heads == ['### FP32', '### bfloat16', '### INT8']
    assert text.count('| implementation |') == 3 and text.count('| gluon_resnest |') == 3


def test_benchmark_all_precisions_rejects_bad_input():
    proc = _run('--model', 'resnest14', '--dtype', 'all', '--mode', 'train')
    assert proc.returncode == 2 and 'is for --mode infer' in proc.stderr
    proc = _run('--model', 'resnest14', '--dtype', 'bfloat16', '--int8-variant', '{}')
    assert proc.returncode == 2 and '--int8-variant needs --dtype int8 or all' in proc.stderr


@pytest.mark.slow
def test_benchmark_all_precisions_every_peer():
    """--dtype all against every peer: each precision's table holds the peers of it."""
    pythons = [os.environ.get('GLUON_RESNEST_TORCH_PYTHON') or
               os.path.join(REPO, '.torchvenv', 'bin', 'python'),
               os.environ.get('GLUON_RESNEST_OPENVINO_PYTHON') or
               os.path.join(REPO, '.ovvenv', 'bin', 'python')]
    if not all(os.path.isfile(p) for p in pythons):
        pytest.skip('no PyTorch or OpenVINO virtualenv')
    proc = _run('--model', 'resnest14', '--batch-size', '2', '--input-size', '32',
                '--classes', '10', '--repetitions', '1', '--iters', '1', '--latency-iters', '1',
                '--compare', 'gluoncv,torch,onnxruntime,openvino', '--dtype', 'all', '--json')
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    rows = {mode: [(r['framework'], r['dtype']) for r in sub['results']]
            for mode, sub in report['modes'].items()}
    assert rows == {
        'float32': [('ours', 'float32'), ('gluoncv', 'float32'), ('torch', 'float32'),
                    ('onnxruntime', 'float32'), ('openvino', 'float32')],
        'bfloat16': [('ours', 'bfloat16'), ('torch', 'bfloat16'), ('openvino', 'default')],
        'int8': [('ours', 'int8'), ('openvino', 'int8')]}
    for sub in report['modes'].values():
        assert all(r['latency_ms'] > 0 for r in sub['results'])
        assert set(sub['latency_ratios']) == set(sub['ratios'])


def test_benchmark_detection_rejects_bad_input(capsys):
    benchmark = load_tool('benchmark')
    for args, message in [(('--model', 'resnest14'), 'resnest50 or resnest101'),
                          (('--compare', 'torch'), 'gluoncv only'),
                          (('--batch-size', '2'), 'one image per batch'),
                          (('--dtype', 'int8'), 'float32'),
                          (('--task', 'classify', '--dropblock', 'effective'),
                           '--dropblock is for --task detect')]:
        with pytest.raises(SystemExit) as exit_info:
            benchmark.main(['--task', 'detect', *args])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and message in err, err


@pytest.mark.slow
@pytest.mark.parametrize('task, mode, dropblock', [('detect', 'infer', 'gluoncv'),
                                                 ('detect-features', 'train', 'effective')])
def test_benchmark_detection(task, mode, dropblock):
    proc = _run('--task', task, '--mode', mode, '--model', 'resnest50', '--input-size', '64',
                '--repetitions', '1', '--iters', '1', '--threads', '1', '--compare', 'gluoncv',
                '--dropblock', dropblock, '--json')
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report['task'] == task and report['mode'] == mode and report['batch_size'] == 1
    ours, gluoncv = report['results']
    assert (ours['framework'], gluoncv['framework']) == ('ours', 'gluoncv')
    assert ours['params'] == gluoncv['params'] > 30e6  # the whole detector, same layers
    assert all(r['images_per_sec'] > 0 and r['latency_ms'] is None for r in report['results'])
    assert ("dropblock='effective'" in ours['setting']) is (dropblock == 'effective')
