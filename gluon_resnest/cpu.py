"""Intel AMX for MXNet's oneDNN: bfloat16 and INT8 convolutions on AMX tiles.

MXNet 1.9.1 ships oneDNN 2.4.4, whose AMX kernels (bfloat16 and INT8 convolutions and inner
products on Sapphire Rapids and later Xeons) are used only when the maximum ISA is raised to
``AVX512_CORE_AMX`` and the process holds Linux's permission to use the AMX tile data (Linux
5.16 and later grant it on request, per process; oneDNN 2.4 does not ask, and an AMX
instruction without it kills the process with SIGILL). :func:`enable_amx` does both. It runs
when :mod:`gluon_resnest` is imported, which must come before the process's first oneDNN
operation (importing MXNet alone is fine); set ``GLUON_RESNEST_AMX=0`` to leave oneDNN as it
is. FP32 kernels are unaffected (AMX has no FP32
arithmetic); CPUs without AMX, other kernels and other operating systems are left alone.
"""
from __future__ import annotations

import ctypes
import os
import platform

__all__ = ['amx_enabled', 'enable_amx']

_SYS_ARCH_PRCTL = 158  # x86-64 Linux
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18

_state = {'enabled': False}


def _cpu_has_amx() -> bool:
    try:
        with open('/proc/cpuinfo', encoding='ascii', errors='replace') as handle:
            for line in handle:
                if line.startswith('flags'):
                    flags = line.split(':', 1)[1].split()
                    return 'amx_tile' in flags and ('amx_bf16' in flags or 'amx_int8' in flags)
    except OSError:
        pass
    return False


def enable_amx() -> bool:
    """Let oneDNN run bfloat16/INT8 kernels on AMX tiles; True when they may now be used.

    Does nothing (and returns False) when ``GLUON_RESNEST_AMX=0``, off x86-64 Linux, on CPUs
    without AMX, or when the kernel refuses the tile permission. A ``DNNL_MAX_CPU_ISA`` the
    user set is kept (the permission is still requested). Otherwise oneDNN's maximum ISA is
    raised for this process only: oneDNN reads it once, at its first primitive, which runs
    here; the variable is then removed again, so that child processes (which hold no tile
    permission unless they import this package too) keep oneDNN's default.
    """
    if _state['enabled']:
        return True
    if os.environ.get('GLUON_RESNEST_AMX', '1') == '0':
        return False
    if platform.system() != 'Linux' or platform.machine() != 'x86_64' or not _cpu_has_amx():
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        granted = libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        granted = False
    if not granted:
        return False
    if 'DNNL_MAX_CPU_ISA' not in os.environ:
        os.environ['DNNL_MAX_CPU_ISA'] = 'AVX512_CORE_AMX'
        try:
            import mxnet as mx

            # A first oneDNN primitive (a 1x1 convolution), so that oneDNN reads the ISA now.
            mx.nd.Convolution(mx.nd.ones((1, 16, 2, 2)), mx.nd.ones((16, 16, 1, 1)),
                              kernel=(1, 1), num_filter=16, no_bias=True).wait_to_read()
        finally:
            del os.environ['DNNL_MAX_CPU_ISA']
    _state['enabled'] = True
    return True


def amx_enabled() -> bool:
    """Whether :func:`enable_amx` raised oneDNN's ISA in this process."""
    return _state['enabled']
