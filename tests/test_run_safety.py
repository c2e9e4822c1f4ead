"""Run directories belong to one run; checkpoints are pruned per run and resumed safely."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import mxnet as mx
import pytest

from gluon_resnest.atomic import sha256_of
from gluon_resnest.errors import InputError
from gluon_resnest.training.checkpoint import (
    list_checkpoints,
    resume_checkpoint,
    save_checkpoint,
)
from gluon_resnest.training.rundir import (
    RunLock,
    check_resume,
    check_writable,
    claim_run_dir,
    clear_run,
    read_identity,
    used_by_a_run,
    write_identity,
)


def test_lock_refuses_a_second_owner_and_takes_over_a_dead_ones(tmp_path: Path):
    run = tmp_path / 'run'
    with RunLock(run):
        assert json.loads((run / 'run.lock').read_text())['pid'] == os.getpid()
        with pytest.raises(InputError, match=f'in use by another training \\(pid {os.getpid()}'):
            RunLock(run).acquire()
        # Another process sees it held too (flock is per open file, across processes).
        probe = subprocess.run(
            [sys.executable, '-c', 'import sys; from gluon_resnest.training.rundir import '
             'RunLock; RunLock(sys.argv[1]).acquire()', str(run)],
            capture_output=True, text=True)
        assert probe.returncode != 0 and 'in use by another training' in probe.stderr
    assert not (run / 'run.lock').exists()  # released on exit
    # A process killed while holding it leaves the file but not the lock.
    dead = subprocess.run(
        [sys.executable, '-c', 'import os, signal, sys; from gluon_resnest.training.rundir '
         'import RunLock; RunLock(sys.argv[1]).acquire(); os.kill(os.getpid(), signal.SIGKILL)',
         str(run)])
    assert dead.returncode == -9 and (run / 'run.lock').exists()
    with RunLock(run) as lock:
        assert json.loads(lock.path.read_text())['pid'] == os.getpid()


def test_run_files_identity_and_overwrite(tmp_path: Path):
    run = tmp_path / 'run'
    check_writable(run)
    (run / 'checkpoints').mkdir()
    assert used_by_a_run(run) == []  # an empty checkpoints/ folder is no run
    write_identity(run, {'run_id': 'abc'})
    (run / 'metrics.jsonl').write_text('{}\n')
    (run / 'notes.txt').write_text('mine')
    assert used_by_a_run(run) == ['run.json', 'metrics.jsonl']
    assert read_identity(run)['run_id'] == 'abc'
    clear_run(run)
    assert sorted(p.name for p in run.iterdir()) == ['notes.txt']  # user files stay


def test_resume_refuses_changed_settings_before_writing(tmp_path: Path):
    run = tmp_path / 'run'
    run.mkdir()
    config = {'model': 'resnest14', 'lr': 0.1, 'epochs': 10, 'num_workers': 2}
    (run / 'config.json').write_text(json.dumps(config))
    before = (run / 'config.json').read_text()
    assert check_resume(run, dict(config, epochs=20, num_workers=4)) is None  # allowed
    assert check_resume(run, dict(config, lr=0.01)) is None  # the remedy for a diverged run
    with pytest.raises(InputError, match=r"model: 'resnest14' -> 'resnest26'"):
        check_resume(run, dict(config, model='resnest26'))
    assert (run / 'config.json').read_text() == before


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into read-only folders')
def test_read_only_run_dir_is_found_up_front(tmp_path: Path):
    (tmp_path / 'ro').mkdir(mode=0o555)
    with pytest.raises(InputError, match='cannot write into the run directory'):
        check_writable(tmp_path / 'ro')


def test_read_only_checkpoints_found_up_front_as_an_ordinary_user():
    """Root ignores permissions: act as ``nobody`` in a child process."""
    base = Path(tempfile.mkdtemp(prefix='run_perm_'))  # outside root-only pytest folders
    (base / 'run' / 'checkpoints').mkdir(parents=True)
    os.chmod(base, 0o777)
    os.chmod(base / 'run', 0o777)
    os.chmod(base / 'run' / 'checkpoints', 0o555)
    code = ('import sys\nfrom gluon_resnest.training.rundir import check_writable\n'
            'check_writable(sys.argv[1])\n')
    user = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'] \
        if os.geteuid() == 0 else []
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    try:
        result = subprocess.run([*user, sys.executable, '-c', code, str(base / 'run')],
                                capture_output=True, text=True, env=env)
    finally:
        shutil.rmtree(base)
    assert result.returncode != 0
    assert 'cannot write into the run directory' in result.stderr
    assert str(base / 'run' / 'checkpoints') in result.stderr


def _net_and_trainer():
    net = mx.gluon.nn.Dense(3, in_units=4)
    net.initialize()
    trainer = mx.gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1,
                                                             'momentum': 0.9})
    with mx.autograd.record():
        loss = net(mx.nd.ones((2, 4))).sum()
    loss.backward()
    trainer.step(2)
    return net, trainer


def test_pruning_keeps_other_runs_and_refuses_keep_below_one(tmp_path: Path):
    net, trainer = _net_and_trainer()
    ckpt = tmp_path / 'checkpoints'
    save_checkpoint(ckpt, 7, net, trainer, extra={'run_id': 'old'}, keep=2)
    for epoch in range(3):
        save_checkpoint(ckpt, epoch, net, trainer, extra={'run_id': 'new'}, keep=2)
    assert [p.name for p in list_checkpoints(ckpt, 'new')] == ['epoch-0001', 'epoch-0002']
    assert [p.name for p in list_checkpoints(ckpt, 'old')] == ['epoch-0007']
    with pytest.raises(ValueError, match='keep must be >= 1'):
        save_checkpoint(ckpt, 3, net, trainer, keep=0)
    assert [p.name for p in list_checkpoints(ckpt, 'new')] == ['epoch-0001', 'epoch-0002']


@pytest.mark.parametrize('damage', ['trainer.states', 'model.params', 'rng.pkl'])
def test_resume_falls_back_to_the_newest_loadable_checkpoint(tmp_path: Path, damage: str,
                                                              caplog):
    net, trainer = _net_and_trainer()
    ckpt = tmp_path / 'checkpoints'
    save_checkpoint(ckpt, 0, net, trainer, keep=5)
    good = net.weight.data().asnumpy().copy()
    with mx.autograd.record():
        loss = net(mx.nd.ones((2, 4))).sum()
    loss.backward()
    trainer.step(2)
    save_checkpoint(ckpt, 1, net, trainer, keep=5)
    target = ckpt / 'epoch-0001' / damage
    target.write_bytes(target.read_bytes()[:len(target.read_bytes()) // 2])  # truncated
    fresh, fresh_trainer = _net_and_trainer()
    path, meta = resume_checkpoint(ckpt, fresh, fresh_trainer)
    assert path.name == 'epoch-0000' and meta['epoch'] == 0
    assert (fresh.weight.data().asnumpy() == good).all()
    assert 'epoch-0001' in caplog.text and 'cannot be loaded' in caplog.text
    # With every checkpoint damaged the error says so instead of starting over.
    (ckpt / 'epoch-0000' / damage).write_bytes(b'')
    with pytest.raises(InputError, match='no checkpoint can be loaded'):
        resume_checkpoint(ckpt, fresh, fresh_trainer)


def test_claim_run_dir_one_run_per_directory(tmp_path: Path):
    run = tmp_path / 'run'
    config = {'model': 'resnest14', 'lr': 0.1, 'epochs': 3}
    lock, first = claim_run_dir(run, config, resume=False, overwrite=False)
    with pytest.raises(InputError, match='in use by another training'):
        claim_run_dir(run, config, resume=True, overwrite=False)
    lock.release()
    (run / 'config.json').write_text(json.dumps(config))
    _checkpoint_of(run / 'checkpoints', 0, first['run_id'])
    # A new run without --resume would mix with the recorded one.
    with pytest.raises(InputError, match=r'holds another run \(run.json, config.json, '
                                         r'checkpoints\).*--overwrite'):
        claim_run_dir(run, config, resume=False, overwrite=False)
    assert read_identity(run) == first
    with pytest.raises(InputError, match='give one'):
        claim_run_dir(run, config, resume=True, overwrite=True)
    # --resume keeps the identity; a changed setting is refused before anything is written.
    lock, again = claim_run_dir(run, dict(config, epochs=5), resume=True, overwrite=False)
    lock.release()
    assert again == first
    with pytest.raises(InputError, match='other settings'):
        claim_run_dir(run, dict(config, model='resnetd50'), resume=True, overwrite=False)
    assert json.loads((run / 'config.json').read_text()) == config
    assert not (run / 'run.lock').exists()
    # --overwrite starts a new run with a new identity, deleting the old run's files only.
    (run / 'mine.txt').write_text('kept')
    lock, new = claim_run_dir(run, config, resume=False, overwrite=True)
    lock.release()
    assert new['run_id'] != first['run_id']
    assert sorted(p.name for p in run.iterdir()) == ['mine.txt', 'run.json']


def test_tools_rebuild_a_model_trained_with_model_kwargs(tmp_path: Path, capsys):
    """A checkpoint's model.json carries the recipe's architecture arguments (stem_width)."""
    from tools_cli import load_tool

    from gluon_resnest import get_model
    from gluon_resnest.deploy import build_network, read_meta

    net = get_model('resnest14', classes=10, stem_width=16)
    net.initialize()
    trainer = mx.gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})
    spec = {'model': 'resnest14', 'classes': 10, 'model_kwargs': {'stem_width': 16}}
    path = save_checkpoint(tmp_path / 'checkpoints', 0, net, trainer, model_spec=spec)
    params = str(path / 'model.params')
    rebuilt = build_network('resnest14', params)
    x = mx.nd.random.uniform(shape=(1, 3, 32, 32))
    assert (rebuilt(x) == net(x)).asnumpy().all()
    assert load_tool('export').main(['--model', 'resnest14', '--params', params, '--input-size',
                                     '32', '--prefix', str(tmp_path / 'ex' / 'm')]) == 0
    assert read_meta(str(tmp_path / 'ex' / 'm'))['model_kwargs'] == {'stem_width': 16}
    # Another architecture named on the command line is refused with the file.
    assert load_tool('export').main(['--model', 'resnetd50', '--params', params, '--prefix',
                                     str(tmp_path / 'ex2' / 'm')]) == 2
    assert 'belong to a resnest14, not a resnetd50' in capsys.readouterr().err
    # Without model.json the stem width is unknown: the error names the parameter file.
    (path / 'model.json').unlink()
    assert load_tool('export').main(['--model', 'resnest14', '--params', params, '--prefix',
                                     str(tmp_path / 'ex3' / 'm')]) == 2
    assert 'does not fit resnest14' in capsys.readouterr().err


def _checkpoint_of(ckpt: Path, epoch: int, run_id: str | None) -> Path:
    net, trainer = _net_and_trainer()
    return save_checkpoint(ckpt, epoch, net, trainer,
                           extra={'run_id': run_id} if run_id else None, keep=5)


@pytest.mark.parametrize('held', ['other run', 'nothing', 'no run.json'])
def test_resume_never_trains_from_scratch_over_a_recorded_run(tmp_path: Path, held: str):
    """run.json names a run no checkpoint carries: stop before anything is written."""
    run = tmp_path / 'run'
    config = {'model': 'resnest14', 'lr': 0.1, 'epochs': 3}
    run.mkdir()
    (run / 'config.json').write_text(json.dumps(config))
    if held != 'no run.json':
        write_identity(run, {'run_id': 'recorded'})
    if held != 'nothing':
        _checkpoint_of(run / 'checkpoints', 0, 'old')
    before = {p: p.read_bytes() for p in run.rglob('*') if p.is_file()}
    with pytest.raises(InputError, match='--resume: .*nothing was written') as info:
        claim_run_dir(run, config, resume=True, overwrite=False)
    assert str(run / ('checkpoints' if held == 'no run.json' else 'run.json')) in str(info.value)
    assert {p: p.read_bytes() for p in run.rglob('*') if p.is_file()} == before
    # An empty directory is a new run; checkpoints without a run id (older runs) are taken.
    lock, _ = claim_run_dir(tmp_path / 'fresh', config, resume=True, overwrite=False)
    lock.release()
    legacy = tmp_path / 'legacy'
    _checkpoint_of(legacy / 'checkpoints', 0, None)
    lock, _ = claim_run_dir(legacy, config, resume=True, overwrite=False)
    lock.release()


def test_a_checkpoint_of_another_run_is_never_replaced(tmp_path: Path):
    ckpt = tmp_path / 'checkpoints'
    old = _checkpoint_of(ckpt, 0, 'old')
    before = (old / 'model.params').read_bytes()
    with pytest.raises(InputError, match='belongs to another run'):
        _checkpoint_of(ckpt, 0, 'new')
    assert (old / 'model.params').read_bytes() == before
    assert not list(ckpt.glob('.epoch-*'))


def _flip_middle(path: Path, count: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2 - count // 2
    data[middle:middle + count] = bytes(b ^ 0xFF for b in data[middle:middle + count])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize('damage', ['params flipped', 'states flipped', 'rng list',
                                    'meta list', 'meta without epoch'])
def test_resume_treats_any_damage_as_damage(tmp_path: Path, damage: str, caplog):
    """Bytes flipped inside a file (the checksum in meta.json), or a file holding another
    kind of value, make resuming fall back to the checkpoint before."""
    net = mx.gluon.nn.Dense(3, in_units=4096)  # a parameter file much larger than 4 KB
    net.initialize()
    trainer = mx.gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1,
                                                             'momentum': 0.9})
    ckpt = tmp_path / 'checkpoints'
    save_checkpoint(ckpt, 0, net, trainer, keep=5)
    good = net.weight.data().asnumpy().copy()
    net.weight.set_data(net.weight.data() + 1)
    newest = save_checkpoint(ckpt, 1, net, trainer, keep=5)
    meta = json.loads((newest / 'meta.json').read_text())
    assert set(meta['sha256']) == {'model.params', 'trainer.states', 'rng.pkl'}
    if damage == 'params flipped':
        _flip_middle(newest / 'model.params')
    elif damage == 'states flipped':
        _flip_middle(newest / 'trainer.states', 16)
    elif damage == 'rng list':
        (newest / 'rng.pkl').write_bytes(__import__('pickle').dumps([1, 2]))
        meta['sha256']['rng.pkl'] = sha256_of(newest / 'rng.pkl')  # consistent, but a list
        (newest / 'meta.json').write_text(json.dumps(meta))
    elif damage == 'meta list':
        (newest / 'meta.json').write_text('[2]')
    else:
        (newest / 'meta.json').write_text('{"run_id": null}')
    fresh = mx.gluon.nn.Dense(3, in_units=4096)
    fresh.initialize()
    fresh_trainer = mx.gluon.Trainer(fresh.collect_params(), 'sgd', {'learning_rate': 0.1,
                                                                     'momentum': 0.9})
    path, loaded = resume_checkpoint(ckpt, fresh, fresh_trainer)
    assert path.name == 'epoch-0000' and loaded['epoch'] == 0
    assert (fresh.weight.data().asnumpy() == good).all()
    assert 'epoch-0001 cannot be loaded' in caplog.text
