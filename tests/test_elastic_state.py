"""The MXNet elastic state: commit, roll back, and a rebuilt trainer (one real Horovod worker)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_commit_restore_and_rebuilt_trainer(tmp_path):
    out = tmp_path / 'report.json'
    result = subprocess.run([sys.executable, 'tests/scripts/elastic_state_check.py', str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report['moved']  # the step after the commit changed the weights ...
    assert report['params_restored']  # ... and the roll-back undid it, BatchNorm included
    assert report['bn_stats_kept']
    assert report['momentum_restored']
    assert report['values_restored'] == [4, 2]
    assert report['momentum_in_new_trainer']


def test_lost_peer_errors_are_told_from_others():
    import mxnet as mx

    from gluon_resnest.training.elastic import _horovod_failure

    lost = ['Horovod has been shut down. This was caused by an exception on one of the ranks',
            'Traceback (most recent call last):\n  File "Read error [10.231.0.12]", line 3\n'
            'MXNetError: Connection reset by peer']
    assert all(_horovod_failure(mx.base.MXNetError(text)) for text in lost)
    assert not _horovod_failure(mx.base.MXNetError('Check failed: shape mismatch'))
    assert not _horovod_failure(ValueError('Connection reset by peer'))


def test_elastic_refuses_synchronised_batchnorm():
    import pytest

    from gluon_resnest.training.options import RunOptions, resolve_config

    assert resolve_config(RunOptions(recipe='digits', elastic=True), 2)['sync_bn'] is False
    with pytest.raises(ValueError, match='--elastic cannot be combined with sync_bn'):
        resolve_config(RunOptions(recipe='digits', elastic=True, overrides={'sync_bn': True}), 2)
    assert resolve_config(RunOptions(recipe='digits', overrides={'sync_bn': True}), 2)['sync_bn']
