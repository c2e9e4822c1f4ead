"""The training entry point end to end: horovodrun with 2 workers, resume, NaN, faults."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
HOROVODRUN = str(Path(PY).parent / 'horovodrun')
# A small, fast schedule of the digits recipe: 2 workers x 16 images per step.
FAST = ['--recipe', 'digits', '--global-batch-size', '32', '--num-workers', '1',
        '--warmup-epochs', '0']


@pytest.fixture(scope='module')
def digits(tmp_path_factory) -> Path:
    """scikit-learn's digits as JPEG/PNG folders, packed by our own tools."""
    root = tmp_path_factory.mktemp('digits')
    _ok(subprocess.run([PY, 'tools/make_digits.py', '--out', str(root / 'images')],
                       cwd=ROOT, capture_output=True, text=True))
    for split, keep in (('train', 32), ('val', 12)):  # a subset keeps the runs short
        for folder in (root / 'images' / split).iterdir():
            for extra in sorted(folder.iterdir())[keep:]:
                extra.unlink()
        _ok(subprocess.run([PY, 'tools/pack_rec.py', '--root', str(root / 'images' / split),
                            '--prefix', str(root / split), '--workers', '2', '--no-progress'],
                           cwd=ROOT, capture_output=True, text=True))
    return root


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f'exit {result.returncode}\n{result.stdout}\n{result.stderr}'
    return result


def _train(*args: str, workers: int = 1, timeout: int = 600,
           env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [PY, 'recipes/train.py', *args]
    if workers > 1:
        cmd = [HOROVODRUN, '-np', str(workers), '-H', f'localhost:{workers}', '--gloo', *cmd]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]


def test_two_workers_with_horovodrun(digits, tmp_path):
    run = tmp_path / 'run'
    _ok(_train(*FAST, '--epochs', '2', '--data-dir', str(digits), '--run-dir', str(run),
               '--debug-workers', workers=2))
    shards = [json.loads((run / 'workers' / f'rank-{r}.shard.json').read_text()) for r in (0, 1)]
    assert [s['rank'] for s in shards] == [0, 1] and shards[0]['world_size'] == 2
    first, second = (set(s['indices']) for s in shards)
    assert first and not first & second
    assert first | second == set(range(shards[0]['num_records']))
    digest = [(run / 'workers' / f'rank-{r}.params.sha256').read_text() for r in (0, 1)]
    assert digest[0] == digest[1]
    records = _metrics(run)
    assert [r['epoch'] for r in records] == [0, 1]
    for record in records:
        assert {'epoch', 'train_loss', 'lr', 'img_per_sec', 'val_top1', 'val_top5'} <= set(record)
        assert 0 <= record['val_top1'] <= record['val_top5'] <= 1
    assert records[1]['train_loss'] < records[0]['train_loss']
    config = json.loads((run / 'config.json').read_text())
    assert config['world_size'] == 2 and config['per_worker_batch_size'] == 16
    assert (run / 'curves.png').stat().st_size > 1000
    assert sorted(p.name for p in (run / 'checkpoints').iterdir()) == ['epoch-0000',
                                                                        'epoch-0001']
    assert (run / 'export' / 'model-symbol.json').is_file()
    assert (run / 'export' / 'model-0000.params').is_file()


def test_resume_after_kill_matches_uninterrupted_run(digits, tmp_path):
    args = [*FAST, '--epochs', '3', '--data-dir', str(digits), '--no-export']
    whole = tmp_path / 'whole'
    _ok(_train(*args, '--run-dir', str(whole)))
    assert not (whole / 'workers').exists()  # worker files only with --debug-workers

    killed = tmp_path / 'killed'
    proc = subprocess.Popen([PY, 'recipes/train.py', *args, '--run-dir', str(killed)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / 'checkpoints' / 'epoch-0000' / 'meta.json').exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = [p.name for p in (killed / 'checkpoints').iterdir() if not p.name.startswith('.')]
    assert 'epoch-0002' not in done  # it really was interrupted

    result = _ok(_train(*args, '--run-dir', str(killed), '--resume'))
    assert 'resumed from' in result.stderr
    expected, actual = _metrics(whole), _metrics(killed)
    assert [r['epoch'] for r in actual] == [0, 1, 2]
    for a, b in zip(actual, expected):
        assert a['lr'] == pytest.approx(b['lr'])
        assert a['train_loss'] == pytest.approx(b['train_loss'], rel=1e-3, abs=1e-4)
        assert a['val_top1'] == pytest.approx(b['val_top1'], abs=0.01)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(digits, tmp_path):
    run = tmp_path / 'run'
    _ok(_train(*FAST, '--epochs', '1', '--data-dir', str(digits), '--run-dir', str(run),
               '--no-export'))
    good = (run / 'checkpoints' / 'epoch-0000' / 'model.params').read_bytes()
    result = _train(*FAST, '--epochs', '3', '--lr', '1e30', '--data-dir', str(digits),
                    '--run-dir', str(run), '--resume')
    assert result.returncode == 3
    assert 'training loss became nan' in result.stderr.lower()
    assert 'epoch-0000' in result.stderr  # names the last good checkpoint
    assert [p.name for p in (run / 'checkpoints').iterdir()] == ['epoch-0000']
    assert (run / 'checkpoints' / 'epoch-0000' / 'model.params').read_bytes() == good


def test_launcher_environment_that_horovod_contradicts(digits, tmp_path):
    """Loaders are built from the launcher's environment before hvd.init(); when Horovod then
    reports another rank/size (here: MPI variables, but a Gloo-only single process), they are
    rebuilt for the real one with fork-server workers."""
    run = tmp_path / 'run'
    result = _ok(_train(*FAST, '--epochs', '1', '--data-dir', str(digits), '--run-dir', str(run),
                        '--debug-workers',
                        env={'OMPI_COMM_WORLD_RANK': '1', 'OMPI_COMM_WORLD_SIZE': '2'}))
    assert 'says rank 1 of 2, Horovod says rank 0 of 1' in result.stderr
    shard = json.loads((run / 'workers' / 'rank-0.shard.json').read_text())
    assert shard['world_size'] == 1 and sorted(shard['indices']) == list(
        range(shard['num_records']))
    assert json.loads((run / 'config.json').read_text())['world_size'] == 1
    assert [r['epoch'] for r in _metrics(run)] == [0]


def test_bad_input_fails_clearly(digits, tmp_path):
    run = str(tmp_path / 'run')
    result = _train(*FAST, '--data-dir', str(tmp_path / 'nowhere'), '--run-dir', run)
    assert result.returncode == 2 and 'does not exist' in result.stderr

    no_idx = tmp_path / 'no_idx'
    no_idx.mkdir()
    for name in ('train.rec', 'val.rec', 'val.idx'):
        (no_idx / name).write_bytes((digits / name).read_bytes())
    result = _train(*FAST, '--data-dir', str(no_idx), '--run-dir', run)
    assert result.returncode == 2 and "train.idx' not found" in result.stderr

    result = _train(*FAST, '--model', 'resnest51', '--data-dir', str(digits), '--run-dir', run)
    assert result.returncode == 2 and "unknown model 'resnest51'" in result.stderr
    assert not (tmp_path / 'run' / 'checkpoints').exists()


def test_dead_worker_ends_the_job(digits, tmp_path):
    run = tmp_path / 'run'
    cmd = [HOROVODRUN, '-np', '2', '-H', 'localhost:2', '--gloo', PY, 'recipes/train.py',
           *FAST, '--epochs', '50', '--data-dir', str(digits), '--run-dir', str(run)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.time() + 300
        victim = None
        while victim is None:
            assert proc.poll() is None and time.time() < deadline
            if (run / 'checkpoints' / 'epoch-0000' / 'meta.json').exists():
                victim = _rank_pid(str(run), rank=1)
            time.sleep(0.1)
        os.kill(victim, signal.SIGKILL)
        output, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert 'exit' in output.lower() or 'error' in output.lower()
    # every checkpoint present is complete
    for ckpt in (run / 'checkpoints').glob('epoch-*'):
        assert {'model.params', 'trainer.states', 'meta.json'} <= {p.name for p in
                                                                    ckpt.iterdir()}


def _rank_pid(marker: str, rank: int) -> int | None:
    """PID of the training process of ``rank`` whose command line mentions ``marker``.

    Its forked data workers share its command line and environment: the training process is
    the one whose parent is not among the matches.
    """
    matches = {}
    for proc in Path('/proc').iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / 'cmdline').read_bytes().split(b'\0')
            environ = (proc / 'environ').read_bytes().split(b'\0')
            status = (proc / 'status').read_text()
        except OSError:
            continue
        if (any(b'train.py' in part for part in cmdline)
                and marker.encode() in b' '.join(cmdline)
                and f'HOROVOD_RANK={rank}'.encode() in environ
                and not any(b'horovodrun' in part for part in cmdline)):
            ppid = next(int(line.split()[1]) for line in status.splitlines()
                        if line.startswith('PPid:'))
            matches[int(proc.name)] = ppid
    roots = [pid for pid, ppid in matches.items() if ppid not in matches]
    return roots[0] if len(roots) == 1 else None


def test_synchronised_batchnorm_with_two_workers(digits, tmp_path):
    run = tmp_path / 'run'
    _ok(_train(*FAST, '--epochs', '1', '--sync-bn', 'true', '--data-dir', str(digits),
               '--run-dir', str(run), '--debug-workers', workers=2))
    digest = [(run / 'workers' / f'rank-{r}.params.sha256').read_text() for r in (0, 1)]
    assert digest[0] == digest[1]
    assert json.loads((run / 'config.json').read_text())['sync_bn'] is True
    assert (run / 'export' / 'model-symbol.json').is_file()
