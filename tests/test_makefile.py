"""``make install`` on CPU and GPU hosts: the commands it would run (``make -n``) and its checks.

A GPU host is simulated with a stand-in ``nvidia-smi`` on ``PATH``, the CUDA toolkit with a
stand-in ``nvcc`` and NCCL with an empty ``include/nccl.h``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAKE = shutil.which('make')
pytestmark = pytest.mark.skipif(MAKE is None, reason='make is not installed')


def _script(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\n{text}\n')
    path.chmod(0o755)


def _make(*args: str, tmp_path: Path, path: list[Path], **env: str
          ) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if k not in ('CUDA_HOME', 'NCCL_HOME', 'HOROVOD_CUDA_HOME', 'HOROVOD_NCCL_HOME',
                          'MAKEFLAGS', 'MFLAGS')}
    clean['PATH'] = os.pathsep.join([*(str(p) for p in path), '/usr/bin', '/bin'])
    # A virtualenv that does not exist, so that the install target is out of date.
    return subprocess.run([MAKE, '--no-print-directory', *args, f'VENV={tmp_path / "venv"}',
                           'CUDA_DEFAULT=/nonexistent', 'NCCL_DEFAULT=/nonexistent'],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**clean, **env})


@pytest.fixture
def gpu_host(tmp_path) -> dict[str, Path]:
    """Stand-ins for a GPU driver, a CUDA toolkit and NCCL's headers."""
    bin_dir, cuda, nccl = tmp_path / 'bin', tmp_path / 'cuda', tmp_path / 'nccl'
    _script(bin_dir / 'nvidia-smi', 'echo "GPU 0: Stand-in GPU (UUID: GPU-0000)"')
    _script(cuda / 'bin' / 'nvcc', 'echo "Cuda compilation tools, release 11.2"')
    (nccl / 'include').mkdir(parents=True)
    (nccl / 'include' / 'nccl.h').write_text('/* stand-in */\n')
    return {'bin': bin_dir, 'cuda': cuda, 'nccl': nccl}


def _horovod_line(out: str) -> str:
    lines = [line for line in out.splitlines() if 'install' in line and 'horovod' in line]
    assert len(lines) == 1, out
    return lines[0]


def test_cpu_host_builds_gloo_only(tmp_path):
    result = _make('-n', 'install', tmp_path=tmp_path, path=[])
    assert result.returncode == 0, result.stderr
    assert '-e ".[cpu,test,train]"' in result.stdout
    horovod = _horovod_line(result.stdout)
    assert 'HOROVOD_WITH_MXNET=1' in horovod and 'HOROVOD_WITH_GLOO=1' in horovod
    assert 'HOROVOD_GPU_OPERATIONS' not in result.stdout and 'nccl' not in result.stdout.lower()
    assert 'cu112' not in result.stdout


def test_gpu_host_builds_nccl_operations(tmp_path, gpu_host):
    result = _make('-n', 'install', tmp_path=tmp_path, path=[gpu_host['bin'],
                                                             gpu_host['cuda'] / 'bin'],
                   NCCL_HOME=str(gpu_host['nccl']))
    assert result.returncode == 0, result.stderr
    assert '-e ".[cu112,test,train]"' in result.stdout
    horovod = _horovod_line(result.stdout)
    for setting in ('HOROVOD_GPU_OPERATIONS=NCCL', f'HOROVOD_CUDA_HOME={gpu_host["cuda"]}',
                    f'HOROVOD_NCCL_HOME={gpu_host["nccl"]}', 'HOROVOD_WITH_MXNET=1'):
        assert setting in horovod
    check = [line for line in result.stdout.splitlines() if 'nccl_built()' in line]
    assert check and 'assert hvd.nccl_built()' in check[0]


def test_gpu_host_finds_the_toolkit_from_horovod_cuda_home(tmp_path, gpu_host):
    (gpu_host['cuda'] / 'include').mkdir()
    (gpu_host['cuda'] / 'include' / 'nccl.h').write_text('/* stand-in */\n')
    result = _make('gpu-check', tmp_path=tmp_path, path=[gpu_host['bin']],
                   HOROVOD_CUDA_HOME=str(gpu_host['cuda']))
    assert result.returncode == 0, result.stderr
    assert f'CUDA toolkit {gpu_host["cuda"]}, NCCL {gpu_host["cuda"]}' in result.stdout


def test_gpu_host_without_nvcc_stops_with_the_reason(tmp_path, gpu_host):
    result = _make('install', tmp_path=tmp_path, path=[gpu_host['bin']],
                   NCCL_HOME=str(gpu_host['nccl']))
    assert result.returncode != 0
    assert 'a GPU is visible but nvcc is not' in result.stderr
    assert not (tmp_path / 'venv').exists()  # stopped before installing anything


def test_gpu_host_without_nccl_stops_with_the_reason(tmp_path, gpu_host):
    result = _make('install', tmp_path=tmp_path, path=[gpu_host['bin'], gpu_host['cuda'] / 'bin'])
    assert result.returncode != 0
    assert 'a GPU is visible but nccl.h is not' in result.stderr
    assert "install NCCL's development files or set HOROVOD_NCCL_HOME" in result.stderr
    assert not (tmp_path / 'venv').exists()
