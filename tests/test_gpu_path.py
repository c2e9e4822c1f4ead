"""The GPU cluster path as far as a CPU runs it: launch plan, a 64-worker rank's derivations,
mixed precision (bfloat16 AMP on CPU runs every line of the float16 path but the dtype)."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from gluon_resnest.deploy.graph import strip_amp_casts
from gluon_resnest.training.cli import main as train_main
from gluon_resnest.training.options import RunOptions, launch_from_env, resolve_config
from gluon_resnest.training.plan import (
    IMAGENET_TRAIN_IMAGES,
    describe_worker,
    local_rank_from_env,
    worker_device,
)

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
HOROVODRUN = str(Path(PY).parent / 'horovodrun')
# A short schedule on a subset of digits: 10 steps of 32 images per epoch.
FAST = ['--recipe', 'digits', '--global-batch-size', '32', '--num-workers', '1',
        '--warmup-epochs', '0']
BF16 = ['--amp', 'true', '--amp-dtype', 'bfloat16']


def _run(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([PY, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=None if env is None else {**os.environ, **env})


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f'exit {result.returncode}\n{result.stdout}\n{result.stderr}'
    return result


def _train(*args: str, workers: int = 1) -> subprocess.CompletedProcess:
    cmd = ['recipes/train.py', *args]
    if workers > 1:
        # bfloat16 on 32x32 digits runs about 3x slower than float32 on CPUs (oneDNN reorders).
        return _ok(subprocess.run(
            [HOROVODRUN, '-np', str(workers), '-H', f'localhost:{workers}', '--gloo', PY, *cmd],
            cwd=ROOT, capture_output=True, text=True, timeout=1800))
    return _ok(_run(*cmd))


@pytest.fixture(scope='module')
def digits(tmp_path_factory) -> Path:
    """A subset of scikit-learn's digits (32 train, 12 val images a class), packed by our tools."""
    root = tmp_path_factory.mktemp('digits')
    _ok(_run('tools/make_digits.py', '--out', str(root / 'images')))
    for split, keep in (('train', 32), ('val', 12)):
        for folder in (root / 'images' / split).iterdir():
            for extra in sorted(folder.iterdir())[keep:]:
                extra.unlink()
        _ok(_run('tools/pack_rec.py', '--root', str(root / 'images' / split), '--prefix',
                 str(root / split), '--workers', '2', '--no-progress'))
    return root


@pytest.mark.parametrize('model,batch,lr', [('resnest50', 128, 3.2), ('resnest101', 64, 1.6),
                                            ('resnest200', 32, 0.8), ('resnest269', 32, 0.8)])
def test_plan_for_64_gpus(model, batch, lr, capsys):
    assert train_main(['--recipe', model, '--plan', '--hosts', '8', '--gpus-per-host', '8',
                       '--network-interface', 'ib0', '--json']) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan['world_size'] == 64 and plan['per_worker_batch_size'] == batch
    assert plan['global_batch_size'] == 64 * batch and math.isclose(plan['lr'], lr)
    # Shards of ceil(N / 64) records, full batches only.
    steps = math.ceil(IMAGENET_TRAIN_IMAGES / 64) // batch
    assert plan['steps_per_epoch'] == steps
    assert plan['total_iterations'] == 270 * steps
    # The schedule counts ceil((N // 64) / batch) = steps + 1 iterations per epoch (the
    # authors' count), so its 5 warm-up epochs are 5 iterations longer.
    assert plan['warmup_iterations'] == 5 * (steps + 1)
    assert plan['argv'][:5] == ['horovodrun', '-np', '64', '-H',
                                ','.join(f'host{i}:8' for i in range(1, 9))]
    assert plan['argv'][5:7] == ['--network-interface', 'ib0']
    assert plan['argv'][-6:] == ['--recipe', model, '--data-dir', '/data/imagenet-rec',
                                 '--run-dir', f'runs/{model}']
    rank37 = plan['ranks'][37]
    assert rank37 == {'rank': 37, 'host': 'host5', 'local_rank': 5, 'cross_rank': 4,
                      'device': 'gpu(5)'}
    assert sorted(plan['data']) == [f'host{i}' for i in range(1, 9)]
    hours = 270 * IMAGENET_TRAIN_IMAGES / plan['expected_img_per_sec'] / 3600
    assert plan['expected_img_per_sec'] > 0 and math.isclose(plan['estimated_hours'], hours,
                                                             abs_tol=0.06)


def test_plan_from_the_command_line():
    result = _ok(_run('recipes/train.py', '--recipe', 'resnest50', '--plan', '--hosts',
                      'gpu-a,gpu-b', '--gpus-per-host', '4'))
    assert 'horovodrun -np 8 -H gpu-a:4,gpu-b:4 python recipes/train.py' in result.stdout
    assert '1024 per worker; lr 3.2' in result.stdout
    result = _run('recipes/train.py', '--recipe', 'resnest50', '--plan', '--hosts', '3',
                  '--gpus-per-host', '7')
    assert result.returncode == 2 and 'does not divide over 21 workers' in result.stderr
    assert 'Traceback' not in result.stderr


RANK_37 = {'HOROVOD_RANK': '37', 'HOROVOD_SIZE': '64', 'HOROVOD_LOCAL_RANK': '5',
           'HOROVOD_LOCAL_SIZE': '8', 'HOROVOD_CROSS_RANK': '4', 'HOROVOD_CROSS_SIZE': '8'}


def test_rank_37_of_64_derives_its_device_shard_batch_and_lr(monkeypatch):
    for key, value in RANK_37.items():
        monkeypatch.setenv(key, value)
    rank, size = launch_from_env()
    local_rank = local_rank_from_env()
    assert (rank, size, local_rank) == (37, 64, 5)
    config = resolve_config(RunOptions(recipe='resnest50'), size)
    worker = describe_worker(config, rank, local_rank, num_gpus=8)
    assert worker['device'] == 'gpu(5)'
    assert worker['per_worker_batch_size'] == 128 and math.isclose(worker['lr'], 3.2)
    per_rank = math.ceil(IMAGENET_TRAIN_IMAGES / 64)
    assert worker['shard_size'] == per_rank and worker['steps_per_epoch'] == per_rank // 128
    # Rank 37 reads block 37 of epoch 0's permutation, drawn from (seed, epoch).
    order = np.random.default_rng([config['seed'], 0]).permutation(IMAGENET_TRAIN_IMAGES)
    assert worker['shard_head'] == order[37 * per_rank:37 * per_rank + 4].tolist()
    # The trainer's own command line reads the same environment.
    printed = json.loads(_ok(_run('recipes/train.py', '--recipe', 'resnest50', '--print-config',
                                  env=RANK_37)).stdout)
    assert printed['world_size'] == 64 and printed['per_worker_batch_size'] == 128
    # A host with fewer GPUs than workers is refused with the reason.
    with pytest.raises(ValueError, match='local rank 5 needs GPU 5, but this host has 4'):
        worker_device(5, 4)
    assert worker_device(5, 0) == ('cpu', 0)


def test_strip_amp_casts_gives_the_fp32_graph():
    a, b = mx.sym.var('a'), mx.sym.var('b')
    cast = mx.sym.amp_multicast(a, mx.sym.amp_cast(b, dtype='float16'), num_outputs=2)
    symbol = mx.sym.FullyConnected(cast[1], mx.sym.var('w'), num_hidden=3, no_bias=True) + cast[0]
    stripped = strip_amp_casts(symbol)
    assert 'amp_' not in stripped.tojson()
    assert sorted(stripped.list_arguments()) == sorted(symbol.list_arguments())
    args = {'a': mx.nd.ones((2, 3)), 'b': mx.nd.arange(8).reshape((2, 4)),
            'w': mx.nd.arange(12).reshape((3, 4)) / 10}
    expected = mx.nd.dot(args['b'], args['w'], transpose_b=True) + args['a']
    out = stripped.eval(ctx=mx.cpu(), **args)[0]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.asnumpy(), expected.asnumpy(), rtol=1e-6)


def test_float16_amp_without_gpu_is_a_clear_error(digits, tmp_path):
    result = _run('recipes/train.py', *FAST, '--epochs', '1', '--amp', 'true', '--data-dir',
                  str(digits), '--run-dir', str(tmp_path / 'run'))
    assert result.returncode == 2
    assert 'needs a GPU' in result.stderr and '--amp-dtype bfloat16' in result.stderr
    assert 'Traceback' not in result.stderr


def _digest(run: Path, rank: int = 0) -> str:
    return (run / 'workers' / f'rank-{rank}.params.sha256').read_text()


def _check_fp32_export(run: Path) -> None:
    """The export holds no mixed-precision cast and computes in float32 in a fresh process."""
    symbol = (run / 'export' / 'model-symbol.json').read_text()
    assert 'amp_cast' not in symbol and 'amp_multicast' not in symbol
    code = ('import mxnet as mx; from gluon_resnest.deploy import load_exported; '
            f'net, meta = load_exported({str(run / "export" / "model")!r}); '
            'out = net(mx.nd.ones((2, 3, 32, 32))); print(out.dtype.__name__, out.shape)')
    assert _ok(_run('-c', code)).stdout.split()[0] == 'float32'


@pytest.mark.parametrize('workers', [1, pytest.param(2, marks=pytest.mark.slow)])
def test_bfloat16_amp_resumes_exactly(workers, digits, tmp_path):
    """A run that lost its last epoch and resumes ends bit-identical to the uninterrupted one."""
    whole, resumed = tmp_path / 'whole', tmp_path / 'resumed'
    common = [*FAST, *BF16, '--epochs', '2', '--data-dir', str(digits), '--debug-workers']
    _train(*common, '--run-dir', str(whole), workers=workers)
    meta = json.loads((whole / 'checkpoints' / 'epoch-0001' / 'meta.json').read_text())
    assert meta['amp_loss_scaler']['loss_scale'] > 0
    assert meta['amp_loss_scaler']['unskipped'] == 20  # two epochs of 10 finite steps
    # As if the run had died during its second epoch: epoch 0's checkpoint is the newest.
    shutil.copytree(whole, resumed, ignore=shutil.ignore_patterns('epoch-0001', 'export'))
    _train(*common, '--run-dir', str(resumed), '--resume', workers=workers)
    for rank in range(workers):
        assert _digest(resumed, rank) == _digest(whole, rank) == _digest(whole, 0)
    records = [json.loads(line) for line in (whole / 'metrics.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in records] == [0, 1]
    assert all(math.isfinite(r['train_loss']) for r in records)
    assert (resumed / 'metrics.jsonl').read_text().count('\n') == 2
    _check_fp32_export(whole)


@pytest.mark.slow
def test_bfloat16_amp_two_workers_match_fp32_accuracy(tmp_path):
    """The digits recipe under horovodrun, bfloat16 AMP vs FP32: within 1 point of top-1."""
    data = tmp_path / 'digits'
    _ok(_run('tools/make_digits.py', '--out', str(data / 'images')))
    for split in ('train', 'val'):
        _ok(_run('tools/pack_rec.py', '--root', str(data / 'images' / split), '--prefix',
                 str(data / split), '--workers', '2', '--no-progress'))
    top1 = {}
    for name, extra in (('fp32', []), ('bf16', BF16)):
        run = tmp_path / name
        _train('--recipe', 'digits', *extra, '--data-dir', str(data), '--run-dir', str(run),
               '--debug-workers', workers=2)
        digests = [(run / 'workers' / f'rank-{r}.params.sha256').read_text() for r in (0, 1)]
        assert digests[0] == digests[1]
        records = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
        assert len(records) == 15
        top1[name] = records[-1]['val_top1']
    _check_fp32_export(tmp_path / 'bf16')
    assert top1['fp32'] > 0.95
    assert abs(top1['bf16'] - top1['fp32']) <= 0.01, top1
