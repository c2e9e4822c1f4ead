"""HorovodSyncBatchNorm: 2 workers on half batches == BatchNorm on the whole batch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_sync_bn_matches_whole_batch_batchnorm(tmp_path):
    out = tmp_path / 'report.json'
    cmd = [str(Path(sys.executable).parent / 'horovodrun'), '-np', '2', '-H', 'localhost:2',
           '--gloo', sys.executable, str(ROOT / 'tests' / 'scripts' / 'sync_bn_check.py'),
           str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report) == {'hybridize=False', 'hybridize=True'}
    for errors in report.values():
        scale = errors['scale']
        assert errors['y'] <= 1e-5 * scale
        assert errors['inference'] <= 1e-5 * scale
        assert errors['dx'] <= 1e-5
        assert errors['grads'] <= 1e-4
        assert errors['running'] <= 1e-4


def test_sync_bn_names_match_batchnorm():
    from gluon_resnest import get_model
    from gluon_resnest.layers import HorovodSyncBatchNorm

    plain = get_model('resnest14')
    synced = get_model('resnest14', norm_layer=HorovodSyncBatchNorm)
    shapes = {k: p.shape for k, p in plain._collect_params_with_prefix().items()}
    assert {k: p.shape for k, p in synced._collect_params_with_prefix().items()} == shapes

