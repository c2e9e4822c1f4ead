"""Horovod across hosts on the namespace test bed (``tests/multihost.py``): a real
``horovodrun -H node1:N,node2:N --gloo --network-interface eth1`` job whose workers run in two
network namespaces, each with its own address and hostname, reached through ssh.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from multihost import IFACE, Cluster, unavailable_reason

pytestmark = [pytest.mark.slow, pytest.mark.multihost]

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
HOROVODRUN = str(Path(PY).parent / 'horovodrun')
# The digits recipe, short: 320 training images (10 steps of 32 per epoch), 120 validation.
FAST = ['--recipe', 'digits', '--global-batch-size', '32', '--num-workers', '1',
        '--warmup-epochs', '0', '--debug-workers']
TRAIN_PER_CLASS, VAL_PER_CLASS = 32, 12
# Elastic runs train on all of digits (1437 / 360 images), long enough for a stable accuracy.
ELASTIC_EPOCHS = 6
ELASTIC = ['--recipe', 'digits', '--global-batch-size', '64', '--num-workers', '1',
           '--epochs', str(ELASTIC_EPOCHS), '--no-export', '--debug-workers',
           '--progress-interval', '0']  # a progress line per batch, to stop at a known one
# A bound on a job, far above its time on a busy machine (not a speed requirement).
JOB_TIMEOUT = 900


@pytest.fixture(scope='module')
def cluster(tmp_path_factory, request) -> Cluster:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f'no multi-host test bed here: {reason}')
    bed = Cluster(2, tmp_path_factory.mktemp('bed'))
    request.addfinalizer(bed.destroy)
    return bed.create()


@pytest.fixture(autouse=True)
def _no_leftovers(cluster):
    """A failed test must not leave workers running into the next one."""
    yield
    cluster.kill_everything()


def _pack_digits(root: Path, keep: dict[str, int | None]) -> Path:
    """scikit-learn's digits (the first ``keep[split]`` images of each class), packed."""
    _ok(subprocess.run([PY, 'tools/make_digits.py', '--out', str(root / 'images')],
                       cwd=ROOT, capture_output=True, text=True))
    for split, count in keep.items():
        for folder in (root / 'images' / split).iterdir():
            for extra in sorted(folder.iterdir())[count:] if count else []:
                extra.unlink()
        _ok(subprocess.run([PY, 'tools/pack_rec.py', '--root', str(root / 'images' / split),
                            '--prefix', str(root / split), '--workers', '2', '--no-progress'],
                           cwd=ROOT, capture_output=True, text=True))
    return root


@pytest.fixture(scope='module')
def digits(tmp_path_factory) -> Path:
    """A subset of digits: 320 training and 120 validation images."""
    return _pack_digits(tmp_path_factory.mktemp('digits'),
                        {'train': TRAIN_PER_CLASS, 'val': VAL_PER_CLASS})


@pytest.fixture(scope='module')
def digits_full(tmp_path_factory) -> Path:
    """All of digits: 1437 training and 360 validation images."""
    return _pack_digits(tmp_path_factory.mktemp('digits_full'), {'train': None, 'val': None})


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f'exit {result.returncode}\n{result.stdout}\n{result.stderr}'
    return result


def _horovodrun(cluster: Cluster, slots: int, argv: list[str], log: Path) -> subprocess.Popen:
    hosts = ','.join(f'{h.name}:{slots}' for h in cluster.hosts)
    cmd = [HOROVODRUN, '-np', str(slots * len(cluster.hosts)), '-H', hosts, '--gloo',
           '--network-interface', IFACE, '--disable-cache', PY, *argv]
    return cluster.launch(cmd, cwd=ROOT, log=log)


def _finish(proc: subprocess.Popen, log: Path, timeout: float = JOB_TIMEOUT) -> str:
    """Wait for a job; return its output."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f'job still running after {timeout} s:\n{log.read_text()[-4000:]}')
    return log.read_text(errors='replace')


def _train(cluster: Cluster, slots: int, args: list[str], log: Path) -> str:
    proc = _horovodrun(cluster, slots, ['recipes/train.py', *args], log)
    output = _finish(proc, log)
    assert proc.returncode == 0, f'exit {proc.returncode}\n{output[-6000:]}'
    return output


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]


def _digests(run: Path, size: int) -> list[str]:
    return [(run / 'workers' / f'rank-{r}.params.sha256').read_text().strip()
            for r in range(size)]


@pytest.mark.parametrize('slots', [1, 2], ids=['2x1', '2x2'])
def test_digits_trains_across_hosts(cluster, digits, tmp_path, slots):
    run = tmp_path / 'run'
    _train(cluster, slots, [*FAST, '--epochs', '2', '--data-dir', str(digits), '--run-dir',
                            str(run)], tmp_path / 'horovodrun.log')
    size = 2 * slots
    config = json.loads((run / 'config.json').read_text())
    assert config['world_size'] == size and config['per_worker_batch_size'] == 32 // size
    digests = _digests(run, size)
    assert len(set(digests)) == 1, digests  # every rank holds the same parameters
    workers = [json.loads((run / 'workers' / f'rank-{r}.shard.json').read_text())
               for r in range(size)]
    for r, info in enumerate(workers):
        # horovodrun fills node1's slots first, then node2's.
        assert info['rank'] == r and info['hostname'] == cluster.hosts[r // slots].name
        assert (info['local_rank'], info['local_size']) == (r % slots, slots)
        assert (info['cross_rank'], info['cross_size']) == (r // slots, 2)
    shards = [set(info['indices']) for info in workers]
    assert set().union(*shards) == set(range(10 * TRAIN_PER_CLASS))
    assert sum(map(len, shards)) == 10 * TRAIN_PER_CLASS  # disjoint: 320 divides by 2 and 4
    records = _metrics(run)
    assert [r['epoch'] for r in records] == [0, 1]
    # Unpadded validation shards, counts summed over ranks: every image counted once.
    assert [r['val_images'] for r in records] == [10 * VAL_PER_CLASS] * 2
    assert records[1]['train_loss'] < records[0]['train_loss']
    assert all(0 <= r['val_top1'] <= r['val_top5'] <= 1 for r in records)
    assert (run / 'export' / 'model-symbol.json').is_file()


def test_lost_host_ends_the_job_and_resume_matches(cluster, digits, tmp_path):
    """Kill every process of the host of rank 0 mid-epoch; the job must end by itself, leave
    only complete files, and ``--resume`` on both hosts must repeat an uninterrupted run."""
    args = [*FAST, '--epochs', '3', '--data-dir', str(digits), '--no-export']
    whole = tmp_path / 'whole'
    _train(cluster, 1, [*args, '--run-dir', str(whole)], tmp_path / 'whole.log')

    run = tmp_path / 'run'
    log = tmp_path / 'killed.log'
    proc = _horovodrun(cluster, 1, ['recipes/train.py', *args, '--run-dir', str(run)], log)
    deadline = time.monotonic() + JOB_TIMEOUT
    first = run / 'checkpoints' / 'epoch-0000' / 'meta.json'
    while not first.exists():  # epoch 2 has begun once epoch 1's checkpoint is complete
        assert proc.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, 'no checkpoint in time'
        time.sleep(0.05)
    killed = cluster.kill_host(cluster.hosts[0].name)
    lost_at = time.monotonic()
    assert killed
    output = _finish(proc, log, timeout=180)
    ended_after = time.monotonic() - lost_at
    assert proc.returncode != 0, output[-4000:]
    assert not cluster.pids(cluster.hosts[1].netns), 'a worker outlived the job'
    print(f'the job ended {ended_after:.1f} s after its host was lost')

    done = sorted(p.name for p in (run / 'checkpoints').iterdir())
    assert 'epoch-0002' not in done  # it really was interrupted
    # A checkpoint is complete or invisible (a temporary .epoch-* folder, never loaded).
    for ckpt in (run / 'checkpoints').glob('epoch-*'):
        assert {'model.params', 'trainer.states', 'meta.json'} <= {p.name for p in ckpt.iterdir()}
    for line in (run / 'metrics.jsonl').read_text().splitlines():
        json.loads(line)  # no torn line

    output = _train(cluster, 1, [*args, '--run-dir', str(run), '--resume'],
                    tmp_path / 'resumed.log')
    assert 'resumed from' in output
    assert [r['epoch'] for r in _metrics(run)] == [0, 1, 2]
    assert _digests(run, 2) == _digests(whole, 2)
    assert len(set(_digests(run, 2))) == 1
    assert not list((run / 'checkpoints').glob('.epoch-*'))


def _log_time(output: str, pattern: str) -> float:
    """Epoch seconds of the first log line matching ``pattern`` (logging's asctime)."""
    match = re.search(r'(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \[rank \d+\] \w+ ' + pattern,
                      output)
    assert match, f'no log line matches {pattern!r}'
    stamp = datetime.strptime(match.group(1), '%Y-%m-%d %H:%M:%S,%f')
    return stamp.timestamp()


def _wait_for(proc: subprocess.Popen, log: Path, pattern: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, log.read_text(errors='replace')):
        assert proc.poll() is None, f'job ended:\n{log.read_text()[-6000:]}'
        assert time.monotonic() < deadline, f'no {pattern!r} in time:\n{log.read_text()[-4000:]}'
        time.sleep(0.1)


def test_elastic_run_survives_a_lost_host_and_takes_it_back(cluster, digits_full, tmp_path):
    """Elastic digits on node1 + node2: node2 dies mid-epoch (and leaves the discovery list),
    node1 rolls back and carries on alone, node2 is listed again and rejoins; the run ends
    with every epoch, within a point of an uninterrupted run's accuracy."""
    args = [*ELASTIC, '--data-dir', str(digits_full)]
    whole = tmp_path / 'whole'
    _train(cluster, 1, [*args, '--run-dir', str(whole)], tmp_path / 'whole.log')

    run = tmp_path / 'run'
    log = tmp_path / 'elastic.log'
    node1, node2 = (h.name for h in cluster.hosts)
    cluster.set_discovered({node1: 1, node2: 1})
    cmd = [HOROVODRUN, '-np', '2', '--min-np', '1', '--max-np', '2', '--host-discovery-script',
           str(cluster.discovery_script), '--blacklist-cooldown-range', '2', '4', '--gloo',
           '--network-interface', IFACE, '--disable-cache', PY, 'recipes/train.py', *args,
           '--run-dir', str(run), '--elastic', '--commit-interval', '4']
    proc = cluster.launch(cmd, cwd=ROOT, log=log)
    _wait_for(proc, log, rf'epoch 3/{ELASTIC_EPOCHS}: 10/')  # batch 10 of 22 is done
    cluster.kill_host(node2)
    lost_at = time.time()
    cluster.set_discovered({node1: 1})
    _wait_for(proc, log, r'workers: 2 -> 1')
    # Rolled back to a commit made during the epoch (every 4 batches), not to its start.
    batch = int(re.search(r'workers: 2 -> 1; continuing at epoch 3, batch (\d+) ',
                          log.read_text()).group(1))
    assert batch >= 8 and batch % 4 == 0
    _wait_for(proc, log, r'INFO epoch 4: ')  # a whole epoch on one worker
    cluster.set_discovered({node1: 1, node2: 1})
    back_at = time.time()
    output = _finish(proc, log)
    assert proc.returncode == 0, output[-6000:]

    detected = _log_time(output, r'workers: 2 -> 1') - lost_at
    rejoined = _log_time(output, r'workers: 1 -> 2') - back_at
    records, baseline = _metrics(run), _metrics(whole)
    print(f'elastic: lost host noticed after {detected:.1f} s, rejoined {rejoined:.1f} s after '
          f'being listed again; top-1 {records[-1]["val_top1"]:.4f} vs uninterrupted '
          f'{baseline[-1]["val_top1"]:.4f}; workers per epoch {[r["world_size"] for r in records]}')
    assert [r['epoch'] for r in records] == list(range(ELASTIC_EPOCHS))
    sizes = [r['world_size'] for r in records]
    assert sizes[0] == 2 and 1 in sizes and sizes[-1] == 2
    assert abs(records[-1]['val_top1'] - baseline[-1]['val_top1']) <= 0.01
    assert records[-1]['val_images'] == baseline[-1]['val_images']
    digests = _digests(run, 2)
    assert digests[0] == digests[1]  # the rejoined worker ends in sync
