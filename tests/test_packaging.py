"""The wheel: built from this checkout, installed into a fresh virtualenv beside the MXNet pins,
its console scripts run from a directory outside the checkout."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ['train', 'pack-rec', 'export', 'export-onnx', 'quantize', 'evaluate', 'predict',
           'convert-torch', 'complexity', 'archive-mms', 'serve-mms', 'download']


def _ok(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f'{cmd}: exit {result.returncode}\n{result.stderr[-3000:]}'
    return result


@pytest.mark.slow
def test_wheel_installs_and_its_commands_run_outside_the_checkout(tmp_path):
    source = tmp_path / 'source'  # a copy: the build writes nothing into the checkout
    source.mkdir()
    for name in ('pyproject.toml', 'README.md', 'constraints.txt'):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / 'gluon_resnest', source / 'gluon_resnest',
                    ignore=shutil.ignore_patterns('__pycache__'))
    _ok([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation',
         '-w', tmp_path / 'dist', source])
    wheel = next((tmp_path / 'dist').glob('gluon_resnest-*.whl'))

    venv = tmp_path / 'venv'
    _ok([sys.executable, '-m', 'venv', venv])
    _ok([venv / 'bin' / 'python', '-m', 'pip', 'install', '-q', '-c',
         ROOT / 'constraints.txt', f'{wheel}[cpu]'], timeout=1800)

    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env['PATH'] = f'{venv / "bin"}{os.pathsep}{env.get("PATH", "")}'

    def run(*args: str) -> subprocess.CompletedProcess:
        return _ok(list(args), cwd=elsewhere, env=env, timeout=600)

    where = run('python', '-c', 'import gluon_resnest; print(gluon_resnest.__file__)')
    assert Path(where.stdout.strip()).is_relative_to(venv)
    for script in SCRIPTS:
        assert 'usage:' in run(f'gluon-resnest-{script}', '--help').stdout

    config = json.loads(run('gluon-resnest-train', '--recipe', 'resnest269',
                            '--print-config').stdout)
    assert config['model'] == 'resnest269' and config['eval_crop'] == 416
    assert 'resnest50_fast_2s2x40d' in run('gluon-resnest-train', '--help').stdout

    listed = run('gluon-resnest-download', '--list', '--root', 'cache').stdout
    assert 'resnest50-bcfefe1d.params' in listed and 'absent' in listed

    rows = [json.loads(line) for line in run('gluon-resnest-complexity', '--model', 'resnest14',
                                              '--json').stdout.splitlines()]
    assert rows[0]['model'] == 'resnest14' and rows[0]['params'] == 10_611_688

    run('gluon-resnest-export', '--model', 'resnest14', '--input-size', '64', '--prefix',
        'out/resnest14')
    meta = json.loads((elsewhere / 'out' / 'resnest14-meta.json').read_text())
    assert meta['input_size'] == 64 and meta['model'] == 'resnest14'
    assert (elsewhere / 'out' / 'resnest14-symbol.json').is_file()
    assert (elsewhere / 'out' / 'resnest14-0000.params').is_file()
