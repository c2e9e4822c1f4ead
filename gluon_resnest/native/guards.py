"""The assumptions the native libraries make about MXNet and the compiler, one check each.

``split_attention.cc`` uses MXNet's operator-library interface (``lib_api.h``), which is stable
across 1.9.x builds. ``split_attention_onednn.cc`` reaches into MXNet 1.9.1's internals; its
bridges are gathered in ``mxnet_bridge.h``, whose comments name the same assumptions as the
checks here. A check that fails refuses the build or the load (MXNet's own operators are used
instead) rather than letting a mismatched library crash or compute something else.
"""
from __future__ import annotations

import ctypes
import os
import re
import subprocess

__all__ = ['MXNET_VERSION', 'ONEDNN_IN_MXNET', 'dnnl3_version', 'library_refusal',
           'onednn_refusal']

#: The one MXNet the libraries were written and checked against (a CPU build).
MXNET_VERSION = '1.9.1'
#: The oneDNN inside MXNet 1.9.1 whose memory descriptors mxnet_bridge.h fills field by field.
ONEDNN_IN_MXNET = (2, 4)
#: nnvm::Op::UpdateAttrMap with std::string in the pre-C++11 ABI ("Ss"), as mxnet_bridge.h
#: binds it.
_UPDATE_ATTR_MAP = '_ZN4nnvm2Op13UpdateAttrMapERKSsSt8functionIFvPN4dmlc3anyEEE'


def _mxnet_base() -> str:
    import mxnet as mx

    return os.path.dirname(os.path.abspath(mx.__file__))


def library_refusal() -> str | None:
    """Why no native library may be built or loaded in this process, or None."""
    import mxnet as mx
    from mxnet.runtime import Features

    # Assumption: MXNet 1.9.1, the build whose operators the self-check compared against.
    if mx.__version__ != MXNET_VERSION:
        return f'they are written for MXNet {MXNET_VERSION}, this is {mx.__version__}'
    # Assumption: a CPU build. The operators have CPU kernels only; a CUDA build (mxnet-cu*)
    # runs networks in GPU contexts, where they would not be found.
    if Features().is_enabled('CUDA'):
        return 'this MXNet is a CUDA build (the operators run on the CPU only; GPU contexts ' \
               "use MXNet's operators)"
    return None


def _header_version(path: str) -> tuple[int, ...] | None:
    try:
        with open(path, encoding='utf-8') as handle:
            text = handle.read()
    except OSError:
        return None
    parts = [re.search(rf'#define DNNL_VERSION_{key}\s+(\d+)', text)
             for key in ('MAJOR', 'MINOR', 'PATCH')]
    if not all(parts):
        return None
    return tuple(int(p.group(1)) for p in parts)  # type: ignore[union-attr]


def dnnl3_version(include: str) -> tuple[int, ...] | None:
    """The version of the oneDNN 3 whose headers are in ``include``."""
    return _header_version(os.path.join(include, 'oneapi', 'dnnl', 'dnnl_version.h'))


def _compiler_is_gcc(compiler: str) -> str | None:
    try:
        proc = subprocess.run([compiler, '--version'], capture_output=True, text=True,
                              check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f'{compiler} --version failed: {err}'
    first = (proc.stdout or '').splitlines()[:1]
    text = first[0] if first else ''
    if 'clang' in text.lower() or not ('g++' in text or 'GCC' in text or 'gcc' in text):
        return f'the compiler is not GCC ({text.strip() or compiler})'
    return None


def onednn_refusal(compiler: str) -> str | None:
    """Why ``split_attention_onednn.cc`` (MXNet's internals) must not be built or loaded here.

    Args:
        compiler: The C++ compiler that would build it.
    """
    from mxnet.runtime import Features

    refusal = library_refusal()
    if refusal is not None:
        return refusal
    if not Features().is_enabled('MKLDNN'):
        return 'this MXNet has no oneDNN'
    base = _mxnet_base()
    for path in ('include/mxnet/ndarray.h', 'include/nnvm/op.h', 'include/mkldnn/dnnl.hpp',
                 'libmxnet.so'):
        if not os.path.isfile(os.path.join(base, path)):
            return f'this MXNet ships no {path}'
    # Assumption: the oneDNN inside MXNet is 2.4 (memory descriptors filled field by field).
    version = _header_version(os.path.join(base, 'include', 'mkldnn', 'oneapi', 'dnnl',
                                           'dnnl_version.h'))
    if version is None or version[:2] != ONEDNN_IN_MXNET:
        return f'the oneDNN inside this MXNet is {version}, not {ONEDNN_IN_MXNET}'
    # Assumption: GCC and libstdc++ (the std::function layout legacy() patches).
    refusal = _compiler_is_gcc(compiler)
    if refusal is not None:
        return refusal
    # Assumption: libmxnet.so exports UpdateAttrMap in the pre-C++11 std::string ABI.
    try:
        lib = ctypes.CDLL(os.path.join(base, 'libmxnet.so'))
        getattr(lib, _UPDATE_ATTR_MAP)
    except (OSError, AttributeError):
        return 'libmxnet.so exports no nnvm::Op::UpdateAttrMap in the pre-C++11 string ABI'
    return None
