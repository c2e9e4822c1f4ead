"""Native MXNet operators of gluon_resnest, built on first use and loaded with ``mx.library.load``.

Operators:

* ``gluon_resnest_sa_sum_u8``: the Split-Attention weighted sum of an INT8 network
  (:func:`gluon_resnest.deploy.fuse_split_attention_int8`) in one pass over the uint8 splits,
  where MXNet 1.9.1 would dequantize each split, multiply and add in float32 and quantize again
  (it has no broadcasting INT8 multiply);
* ``gluon_resnest_sa_sum`` and ``gluon_resnest_sa_gap``: the float32 weighted sum (optionally
  with the avd pooling that follows it) and the pooled attention input, forward and backward
  (``get_model(..., native=True)``, which the CPU training loop uses), where MXNet's
  broadcast-multiply backward reduces over the feature map slowly.

The library is compiled from ``split_attention.cc`` (shipped with the package) against the
installed MXNet's operator-library interface (``mxnet/include/mxnet/lib_api.h`` and
``mxnet/src/lib_api.cc``) with the C++ compiler ``$CXX`` (default ``g++``), once per source,
MXNet version and compiler, into ``$GLUON_RESNEST_CACHE_DIR`` (default
``~/.cache/gluon_resnest``). ``make install`` builds it; ``python -m gluon_resnest.native``
builds it and prints its path. Set ``GLUON_RESNEST_NATIVE=0`` to never build or load it: INT8
quantization then keeps MXNet's own operators. A network exported with the operator needs the
library in the process that loads it: :func:`gluon_resnest.deploy.load_exported` loads it
itself; with plain ``mx.gluon.SymbolBlock.imports`` call :func:`load` first.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading

__all__ = ['OPERATORS', 'NativeBuildError', 'build', 'enabled', 'load', 'loaded', 'operators_in',
           'uses_native']

logger = logging.getLogger(__name__)

#: Operators the library registers.
OPERATORS = ('gluon_resnest_sa_sum_u8', 'gluon_resnest_sa_sum', 'gluon_resnest_sa_gap')

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'split_attention.cc')
_LIBRARY = 'libgluon_resnest_ops.so'
_lock = threading.Lock()
_state: dict[str, object] = {'loaded': None, 'error': None}


class NativeBuildError(RuntimeError):
    """The operator library could not be built or loaded (the message says why)."""


def enabled() -> bool:
    """False when ``GLUON_RESNEST_NATIVE=0``: the library is then never built or loaded."""
    return os.environ.get('GLUON_RESNEST_NATIVE', '1') != '0'


def loaded() -> bool:
    """True when this process has loaded the library."""
    return bool(_state['loaded'])


def operators_in(symbol_json: str) -> list[str]:
    """The library's operators a symbol's JSON text calls."""
    return [name for name in OPERATORS if f'"{name}"' in symbol_json]


def uses_native(symbol_json: str) -> bool:
    """True when a symbol's JSON text calls one of the library's operators."""
    return bool(operators_in(symbol_json))


def _cache_dir() -> str:
    root = os.environ.get('GLUON_RESNEST_CACHE_DIR')
    if not root:
        root = os.path.join(os.path.expanduser('~'), '.cache', 'gluon_resnest')
    return root


def _mxnet_dirs() -> tuple[str, str, str]:
    import mxnet as mx

    base = os.path.dirname(os.path.abspath(mx.__file__))
    include = os.path.join(base, 'include')
    lib_api = os.path.join(base, 'src', 'lib_api.cc')
    if not os.path.isfile(os.path.join(include, 'mxnet', 'lib_api.h')) or \
            not os.path.isfile(lib_api):
        raise NativeBuildError(f'this MXNet ({base}) ships no operator-library interface '
                               '(include/mxnet/lib_api.h, src/lib_api.cc)')
    return include, lib_api, mx.__version__


def build(force: bool = False) -> str:
    """Compile the library if this source, MXNet and compiler have no build yet; its path.

    Raises:
        NativeBuildError: no compiler, or the compiler failed (its output is in the message).
    """
    include, lib_api, mx_version = _mxnet_dirs()
    cxx = os.environ.get('CXX', 'g++')
    compiler = shutil.which(cxx)
    if compiler is None:
        raise NativeBuildError(f'no C++ compiler ({cxx!r} is not on PATH; set CXX)')
    flags = ['-O3', '-std=c++17', '-shared', '-fPIC', '-fopenmp',
             # Bind the library's own symbols (its copy of lib_api.cc) to itself: another
             # extension loaded with RTLD_GLOBAL (Horovod's) must not stand in for them.
             '-Wl,-Bsymbolic']
    digest = hashlib.sha256(' '.join(flags).encode())
    for path in (_SOURCE, lib_api):
        with open(path, 'rb') as handle:
            digest.update(handle.read())
    digest.update(f'{mx_version}|{os.path.realpath(compiler)}|{sys.platform}'.encode())
    folder = os.path.join(_cache_dir(), f'native-{digest.hexdigest()[:16]}')
    target = os.path.join(folder, _LIBRARY)
    if os.path.isfile(target) and not force:
        return target
    os.makedirs(folder, exist_ok=True)
    # Several processes may build at once: each writes its own file and renames it into place.
    fd, tmp = tempfile.mkstemp(suffix='.so', prefix='.build-', dir=folder)
    os.close(fd)
    cmd = [compiler, *flags, f'-I{include}', lib_api, _SOURCE, '-o', tmp]
    logger.info('building %s', target)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = '\n'.join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise NativeBuildError(f'{os.path.basename(compiler)} failed '
                                   f'(exit {proc.returncode}):\n{tail}')
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load(required: bool = False) -> bool:
    """Build (if needed) and load the library into this process, once; True when loaded.

    With ``required`` a failure raises :class:`NativeBuildError`; otherwise it is logged once
    as a warning and False is returned (as it is when ``GLUON_RESNEST_NATIVE=0``).
    """
    with _lock:
        if _state['loaded']:
            return True
        if not enabled():
            if required:
                raise NativeBuildError('GLUON_RESNEST_NATIVE=0 forbids loading the operator '
                                       'library this network needs')
            return False
        if _state['error'] is None:
            try:
                import mxnet as mx

                path = build()
                mx.library.load(path, verbose=False)
                _state['loaded'] = path
            except (NativeBuildError, OSError) as err:
                _state['error'] = str(err)
            except Exception as err:  # noqa: BLE001 - MXNetError and friends: report them
                _state['error'] = f'{type(err).__name__}: {err}'
            if _state['error'] is not None and not required:
                logger.warning('gluon_resnest native operators unavailable, using MXNet '
                               'operators instead: %s', _state['error'])
        if _state['loaded']:
            return True
        if required:
            raise NativeBuildError(f'the gluon_resnest operator library is unavailable: '
                                   f'{_state["error"]}')
        return False
