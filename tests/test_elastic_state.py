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
