"""oneDNN on Intel AMX: enabled by importing gluon_resnest, only where the CPU has AMX, and INT8
and bfloat16 results that agree with the AVX-512 kernels."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from gluon_resnest.cpu import _cpu_has_amx

ROOT = Path(__file__).resolve().parents[1]

# One child process: a bfloat16 convolution, and an INT8 ResNeSt (quantized with calibration)
# on fixed input; prints which oneDNN kernels ran and the outputs.
CHILD = r'''
import json, os, sys
import numpy as np
import mxnet as mx
import gluon_resnest
from gluon_resnest import get_model
from gluon_resnest.deploy.quantization import quantize_network

rng = np.random.RandomState(0)
x = mx.nd.array(rng.uniform(size=(2, 16, 8, 8)))
w = mx.nd.array(rng.uniform(-1, 1, size=(16, 16, 3, 3)))
conv = mx.nd.Convolution(mx.nd.amp_cast(x, dtype='bfloat16'), mx.nd.amp_cast(w, dtype='bfloat16'),
                         kernel=(3, 3), pad=(1, 1), num_filter=16, no_bias=True)
bf16 = mx.nd.amp_cast(conv, dtype='float32').asnumpy()
mx.random.seed(1)
net = get_model('resnest14', classes=10, stem_width=16)
net.initialize(mx.init.Xavier(magnitude=2))
data = [mx.nd.array(rng.uniform(size=(4, 3, 32, 32))) for _ in range(2)]
qnet = quantize_network(net, data)
int8 = qnet(data[0]).asnumpy()
fp32 = net(data[0]).asnumpy()
json.dump({'amx': gluon_resnest.cpu.amx_enabled(),
           'isa_in_env': 'DNNL_MAX_CPU_ISA' in os.environ,
           'bf16': bf16.tolist(), 'int8': int8.tolist(), 'fp32': fp32.tolist()},
          open(sys.argv[1], 'w'))
'''


def _kernel_grants_tiles() -> bool:
    """Whether Linux grants this process the AMX tile data (idempotent, asked directly)."""
    import ctypes
    import platform

    if platform.system() != 'Linux' or platform.machine() != 'x86_64':
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.syscall(158, 0x1023, 18) == 0  # arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)


def _child(tmp_path: Path, amx: str) -> tuple[dict, str]:
    out = tmp_path / f'amx{amx}.json'
    env = {**os.environ, 'DNNL_VERBOSE': '1', 'GLUON_RESNEST_AMX': amx}
    env.pop('DNNL_MAX_CPU_ISA', None)
    result = subprocess.run([sys.executable, '-c', CHILD, str(out)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    kernels = [line for line in result.stdout.splitlines()
               if line.startswith('dnnl_verbose,exec,cpu,convolution')]
    assert kernels
    return json.loads(out.read_text()), '\n'.join(kernels)


def test_amx_where_the_cpu_has_it_with_the_same_results(tmp_path):
    on, kernels_on = _child(tmp_path, '1')
    off, kernels_off = _child(tmp_path, '0')
    assert not off['amx'] and 'amx' not in kernels_off
    assert not on['isa_in_env']  # child processes keep oneDNN's default
    if on['amx']:
        assert 'avx512_core_amx_bf16' in kernels_on and 'avx512_core_amx_int8' in kernels_on
    else:
        assert 'amx' not in kernels_on
    # Enabled exactly where the CPU has AMX and the kernel grants the tile permission.
    assert on['amx'] == (_cpu_has_amx() and _kernel_grants_tiles())
    # The same arithmetic on other kernels: bfloat16 products accumulate in FP32 on both, INT8
    # products in INT32; only the order of the FP32 additions may differ.
    np.testing.assert_allclose(on['bf16'], off['bf16'], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(on['fp32'], off['fp32'], rtol=1e-5, atol=1e-6)
    int8_on, int8_off = np.array(on['int8']), np.array(off['int8'])
    scale = np.abs(int8_off).max()
    assert np.abs(int8_on - int8_off).max() <= 1e-4 * scale


def test_amx_can_be_turned_off(monkeypatch):
    from gluon_resnest import cpu

    monkeypatch.setenv('GLUON_RESNEST_AMX', '0')
    monkeypatch.setitem(cpu._state, 'enabled', False)
    assert cpu.enable_amx() is False
    assert not cpu.amx_enabled()
