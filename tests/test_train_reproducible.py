"""Two uninterrupted 2-worker runs end bit-identical, BatchNorm statistics included, even with
both CPU cores busy (the BatchNorm statistics sync used to read stale values under load)."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
HOROVODRUN = str(Path(PY).parent / 'horovodrun')


@contextlib.contextmanager
def _cores_busy():
    """One busy-looping process per core for the duration of the block."""
    hogs = [subprocess.Popen(['yes'], stdout=subprocess.DEVNULL)
            for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def _ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f'exit {result.returncode}\n{result.stderr[-3000:]}'


@pytest.mark.slow
def test_two_worker_runs_are_bit_identical_under_load(tmp_path: Path):
    images = tmp_path / 'images'
    _ok(subprocess.run([PY, 'tools/make_digits.py', '--out', str(images)], cwd=ROOT,
                       capture_output=True, text=True))
    for split in ('train', 'val'):
        _ok(subprocess.run([PY, 'tools/pack_rec.py', '--root', str(images / split), '--prefix',
                            str(tmp_path / 'data' / split), '--workers', '2', '--no-progress'],
                           cwd=ROOT, capture_output=True, text=True))
    runs = [tmp_path / 'a', tmp_path / 'b']
    with _cores_busy():
        for run in runs:
            _ok(subprocess.run(
                [HOROVODRUN, '-np', '2', '-H', 'localhost:2', '--gloo', PY, 'recipes/train.py',
                 '--recipe', 'digits', '--epochs', '1', '--no-export', '--data-dir',
                 str(tmp_path / 'data'), '--run-dir', str(run)],
                cwd=ROOT, capture_output=True, text=True, timeout=1200))
    first, second = (mx.nd.load(str(run / 'checkpoints' / 'epoch-0000' / 'model.params'))
                     for run in runs)
    assert sorted(first) == sorted(second)
    statistics = [k for k in first if k.endswith(('running_mean', 'running_var'))]
    assert len(statistics) >= 40  # the test looks at every BatchNorm layer
    differ = [k for k in sorted(first)
              if not np.array_equal(first[k].asnumpy(), second[k].asnumpy())]
    assert differ == [], f'{len(differ)} arrays differ between the runs: {differ[:6]}'
    records = [[{k: v for k, v in json.loads(line).items() if k != 'img_per_sec'}
                for line in (run / 'metrics.jsonl').read_text().splitlines()] for run in runs]
    assert records[0] == records[1]  # loss, learning rate, validation accuracy
