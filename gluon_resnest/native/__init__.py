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
``~/.cache/gluon_resnest``). With MXNet 1.9.1 built with oneDNN, ``gluon_resnest_sa_sum_u8``
comes instead from a second library, ``split_attention_onednn.cc`` built against the C++
headers the wheel ships and registered in MXNet's own operator registry: it reads and writes
the N x H x W x C layout of oneDNN's INT8 convolutions in place, where an operator-library
operator gets every input reordered to N x C x H x W first (the same results, bit for bit).
If that library cannot be built or loaded (or ``GLUON_RESNEST_NATIVE_ONEDNN=0``), the
operator-library version is used. ``make install`` builds them; ``python -m
gluon_resnest.native`` builds and loads them and prints their paths. Set
``GLUON_RESNEST_NATIVE=0`` to never build or load either: INT8 quantization then keeps MXNet's
own operators. A network exported with the operators needs the libraries in the process that
loads it: :func:`gluon_resnest.deploy.load_exported` loads it
itself; with plain ``mx.gluon.SymbolBlock.imports`` call :func:`load` first.

Before a process uses them, the libraries must pass two gates: :mod:`.guards` (this is the CPU
build of MXNet 1.9.1 they were written for, and, for the library that reaches into MXNet's
internals, GCC and the ABI of ``libmxnet.so``), and :mod:`.selfcheck` (every operator against
MXNet's own, in a child process, once per build). A library that fails either is not loaded
(one warning says why) and MXNet's operators are used; a failure among the float32 inference
operators only leaves :func:`gluon_resnest.deploy.fast_inference` on MXNet's operators.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading

from . import bf16, guards, selfcheck

__all__ = ['OPERATORS', 'NativeBuildError', 'build', 'build_onednn', 'enabled', 'library_paths',
           'load', 'loaded', 'loading_note', 'onednn_calls', 'onednn_loaded', 'onednn_supported',
           'operators_in', 'uses_native']

logger = logging.getLogger(__name__)

#: Operators the library registers.
OPERATORS = ('gluon_resnest_sa_sum_u8', 'gluon_resnest_sa_sum', 'gluon_resnest_sa_gap',
             'gluon_resnest_conv', 'gluon_resnest_sa_sum_nhwc', 'gluon_resnest_sa_gap_nhwc',
             'gluon_resnest_conv_bf16', 'gluon_resnest_sa_gap_nhwc_bf16',
             'gluon_resnest_sa_sum_nhwc_bf16', 'gluon_resnest_sa_attention')

_HERE = os.path.dirname(os.path.abspath(__file__))
_SOURCE = os.path.join(_HERE, 'split_attention.cc')
_ONEDNN_SOURCE = os.path.join(_HERE, 'split_attention_onednn.cc')
_HEADERS = (os.path.join(_HERE, 'split_attention_u8.h'),
            os.path.join(_HERE, 'split_attention_f32.h'), os.path.join(_HERE, 'mxnet_bridge.h'),
            os.path.join(_HERE, 'split_attention_bf16.cc'))
_CONV_SOURCE = os.path.join(_HERE, 'conv_dnnl3.cc')
_CONV_LIBRARY = 'libgluon_resnest_dnnl3.so'
_LIBRARY = 'libgluon_resnest_ops.so'
_ONEDNN_LIBRARY = 'libgluon_resnest_onednn.so'
#: The MXNet whose C++ ABI split_attention_onednn.cc was written against.
_ONEDNN_MXNET = '1.9.1'
_FLAGS = ['-O3', '-std=c++17', '-shared', '-fPIC', '-fopenmp',
          # The two layouts' kernels must round alike: no fused multiply-adds.
          '-ffp-contract=off',
          # Bind each library's own symbols to itself: another extension loaded with
          # RTLD_GLOBAL (Horovod's) must not stand in for them.
          '-Wl,-Bsymbolic']
_lock = threading.Lock()
_state: dict[str, object] = {'loaded': None, 'error': None, 'onednn': None, 'onednn_path': None,
                             'conv_path': None, 'conv_error': None, 'bf16_error': None}


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


def loading_note(symbol_json: str) -> str | None:
    """What loading an export whose symbol is ``symbol_json`` needs, for the export tools to
    print; None when plain MXNet loads it."""
    operators = operators_in(symbol_json)
    if not operators:
        return None
    return (f"note: this export calls gluon_resnest's native operators ({', '.join(operators)}): "
            'load it with gluon_resnest.deploy.load_exported (or call gluon_resnest.native.load() '
            'before mx.gluon.SymbolBlock.imports); plain MXNet cannot load it')


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


def _compiler() -> str:
    cxx = os.environ.get('CXX', 'g++')
    compiler = shutil.which(cxx)
    if compiler is None:
        raise NativeBuildError(f'no C++ compiler ({cxx!r} is not on PATH; set CXX)')
    return compiler


def _compile(name: str, inputs: list[str], flags: list[str], mx_version: str,
             force: bool, extra_key: str = '') -> str:
    """Compile ``inputs`` into the cache (once per sources, flags, MXNet, compiler and
    ``extra_key``)."""
    compiler = _compiler()
    digest = hashlib.sha256(' '.join(flags).encode())
    digest.update(extra_key.encode())
    for path in (*inputs, *_HEADERS):
        with open(path, 'rb') as handle:
            digest.update(handle.read())
    digest.update(f'{mx_version}|{os.path.realpath(compiler)}|{sys.platform}'.encode())
    folder = os.path.join(_cache_dir(), f'native-{digest.hexdigest()[:16]}')
    target = os.path.join(folder, name)
    if os.path.isfile(target) and not force:
        return target
    os.makedirs(folder, exist_ok=True)
    # Several processes may build at once: each writes its own file and renames it into place.
    fd, tmp = tempfile.mkstemp(suffix='.so', prefix='.build-', dir=folder)
    os.close(fd)
    cmd = [compiler, *inputs, *flags, '-o', tmp]
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


def build(force: bool = False, int8_operator: bool = True) -> str:
    """Compile the operator library if this source, MXNet and compiler have no build yet; its
    path. ``int8_operator=False`` leaves ``gluon_resnest_sa_sum_u8`` out (the oneDNN library
    registers it).

    Raises:
        NativeBuildError: no compiler, or the compiler failed (its output is in the message).
    """
    include, lib_api, mx_version = _mxnet_dirs()
    flags = [*_FLAGS, f'-DGLUON_RESNEST_LIB_API_U8={int(int8_operator)}', f'-I{include}']
    return _compile(_LIBRARY, [lib_api, _SOURCE], flags, mx_version, force)


def onednn_supported() -> str | None:
    """Why the oneDNN-layout library cannot be built here, or None when it can (the checks of
    :mod:`.guards`: MXNet 1.9.1 CPU build with oneDNN 2.4, GCC, the ABI of libmxnet.so)."""
    try:
        compiler = _compiler()
    except NativeBuildError as err:
        return str(err)
    return guards.onednn_refusal(compiler)


def build_onednn(force: bool = False) -> str:
    """Compile the oneDNN-layout ``gluon_resnest_sa_sum_u8`` library (see the module text)."""
    import mxnet as mx

    reason = onednn_supported()
    if reason is not None:
        raise NativeBuildError(f'the oneDNN-layout INT8 operator is unavailable: {reason}')
    base = os.path.dirname(os.path.abspath(mx.__file__))
    include = os.path.join(base, 'include')
    # libmxnet.so was built with the pre-C++11 std::string ABI and exports no oneDNN functions.
    flags = [*_FLAGS, '-D_GLIBCXX_USE_CXX11_ABI=0', '-DMXNET_USE_MKLDNN=1',
             '-DMSHADOW_USE_CBLAS=0', '-DMSHADOW_USE_MKL=0', '-DMSHADOW_USE_CUDA=0',
             '-DDMLC_USE_CXX11=1', f'-I{include}', f'-I{os.path.join(include, "mkldnn")}',
             f'-L{base}', '-l:libmxnet.so', '-ldl', '-Wl,--no-undefined', f'-Wl,-rpath,{base}']
    return _compile(_ONEDNN_LIBRARY, [_ONEDNN_SOURCE], flags, mx.__version__, force)


def dnnl3_dirs() -> tuple[str, str] | None:
    """``(include, lib)`` of the oneDNN 3 the ``onednn-cpu-gomp`` and ``onednn-devel-cpu-gomp``
    wheels install into this environment, or None when they are not installed."""
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        include = os.path.join(prefix, 'include')
        lib = os.path.join(prefix, 'lib')
        if os.path.isfile(os.path.join(include, 'oneapi', 'dnnl', 'dnnl.hpp')) and \
                os.path.isfile(os.path.join(lib, 'libdnnl.so.3')):
            return include, lib
    return None


def build_conv(force: bool = False) -> str:
    """Compile the oneDNN 3 convolution library (``conv_dnnl3.cc``) of the float32 inference
    graph (:func:`gluon_resnest.deploy.fast_inference`); its path.

    Raises:
        NativeBuildError: oneDNN 3 is not installed (``pip install onednn-cpu-gomp
            onednn-devel-cpu-gomp``), no compiler, or the compiler failed.
    """
    import mxnet as mx

    dirs = dnnl3_dirs()
    if dirs is None:
        raise NativeBuildError('oneDNN 3 is not installed in this environment (pip install '
                               'onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0)')
    include, lib = dirs
    version = guards.dnnl3_version(include)
    flags = ['-O3', '-std=c++17', '-shared', '-fPIC', '-fopenmp', '-Wl,-Bsymbolic', f'-I{include}',
             f'-L{lib}', '-l:libdnnl.so.3', '-Wl,--no-undefined', f'-Wl,-rpath,{lib}']
    return _compile(_CONV_LIBRARY, [_CONV_SOURCE], flags, mx.__version__, force,
                    extra_key=f'oneDNN {version}')


def _hand_conv(handle: ctypes.CDLL, path: str) -> None:
    """Hand the oneDNN 3 convolution library to the oneDNN-layout library."""
    handle.gluon_resnest_set_conv_library.argtypes = [ctypes.c_char_p]
    handle.gluon_resnest_conv_library_error.restype = ctypes.c_char_p
    if handle.gluon_resnest_set_conv_library(path.encode()) != 0:
        _state['conv_error'] = handle.gluon_resnest_conv_library_error().decode()
        logger.info('gluon_resnest: float32 inference keeps MXNet\'s convolutions: %s',
                    _state['conv_error'])
        return
    _state['conv_path'] = path
    if handle.gluon_resnest_bf16_set_conv_library(path.encode()) != 0:
        _state['bf16_error'] = f'{path} lacks grc_convert'


def fast_inference_available() -> bool:
    """True when this process has the float32 inference operators on oneDNN 3
    (``gluon_resnest_conv`` and the N x H x W x C Split-Attention operators)."""
    load()
    return bool(_state['conv_path'])


def fast_inference_unavailable_reason() -> str | None:
    """Why :func:`fast_inference_available` is False, or None."""
    if fast_inference_available():
        return None
    return str(_state['conv_error'] or _state['error'] or
               'the oneDNN-layout operator library is not loaded')


def _build_all() -> dict[str, str | None]:
    """Build what this machine allows: ``{'ops', 'onednn', 'conv'}`` library paths (None for a
    library that cannot be built here; the reason is kept for
    :func:`fast_inference_unavailable_reason`)."""
    refusal = guards.library_refusal()
    if refusal is not None:
        raise NativeBuildError(refusal)
    paths: dict[str, str | None] = {'onednn': None, 'conv': None}
    if os.environ.get('GLUON_RESNEST_NATIVE_ONEDNN', '1') == '0':
        _state['conv_error'] = 'GLUON_RESNEST_NATIVE_ONEDNN=0 leaves the oneDNN-layout library out'
    else:
        try:
            paths['onednn'] = build_onednn()
        except NativeBuildError as err:
            _state['conv_error'] = f'the oneDNN-layout library is unavailable: {err}'
            logger.info('gluon_resnest: INT8 Split-Attention operator through the '
                        'operator-library interface instead: %s', err)
    if paths['onednn']:
        try:
            paths['conv'] = build_conv()
        except NativeBuildError as err:
            _state['conv_error'] = str(err)
            logger.info('gluon_resnest: float32 inference keeps MXNet\'s convolutions: %s', err)
    # The oneDNN library registers gluon_resnest_sa_sum_u8 itself when it is there.
    paths['ops'] = build(int8_operator=paths['onednn'] is None)
    return paths


def _self_checked(paths: dict[str, str | None]) -> dict[str, str | None]:
    """``paths`` less what failed :mod:`.selfcheck` (raises when the core operators did)."""
    if os.environ.get(selfcheck.CHILD_ENV) == 'child':
        return paths
    failures = selfcheck.verdict(paths)
    bf16_failures = [f for f in failures if f['op'] in bf16.OPERATORS]
    if bf16_failures:  # only the bfloat16 path is lost
        _state['bf16_error'] = ('the self-check against MXNet\'s operators failed: '
                                f'{selfcheck.describe(bf16_failures)}')
        logger.info('gluon_resnest: bfloat16 inference is unavailable: %s', _state['bf16_error'])
        failures = [f for f in failures if f['op'] not in bf16.OPERATORS]
    text = selfcheck.describe(failures)
    if any(f['op'] not in selfcheck.FAST_INFERENCE_OPERATORS for f in failures):
        raise NativeBuildError(f'the self-check against MXNet\'s operators failed: {text}')
    if failures:
        _state['conv_error'] = f'the self-check against MXNet\'s operators failed: {text}'
        logger.warning('gluon_resnest: float32 inference keeps MXNet\'s convolutions: %s',
                       _state['conv_error'])
        paths = dict(paths, conv=None)
    return paths


def _load_onednn(path: str, conv_path: str | None) -> None:
    """Load the oneDNN-layout library (and hand it the oneDNN 3 one)."""
    handle = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
    _state['onednn_path'] = path
    handle.gluon_resnest_onednn_calls.restype = ctypes.c_int64
    handle.gluon_resnest_onednn_calls.argtypes = [ctypes.c_int]
    _state['onednn'] = handle
    for name in ('gluon_resnest_conv_calls', 'gluon_resnest_sa_sum_nhwc_calls',
                 'gluon_resnest_train_calls'):
        getattr(handle, name).restype = ctypes.c_int64
        getattr(handle, name).argtypes = [ctypes.c_int]
    if conv_path:
        _hand_conv(handle, conv_path)


def _blocked_training() -> None:
    """Let the float32 Split-Attention operators read and write oneDNN's nChw16c in place."""
    handle = _state['onednn']
    if handle and handle.gluon_resnest_blocked_training() != 0:
        raise NativeBuildError('the Split-Attention operators are not registered in MXNet')


def onednn_loaded() -> bool:
    """True when ``gluon_resnest_sa_sum_u8`` is the oneDNN-layout version in this process."""
    return bool(_state['onednn'])


def library_paths() -> list[str]:
    """The libraries this process loaded: the operator library, then the oneDNN one if any."""
    return [str(p) for p in (_state['loaded'], _state.get('onednn_path'), _state['conv_path'])
            if p]


def onednn_calls() -> dict[str, int]:
    """How often the oneDNN-layout operators ran in this process, per path.

    ``nhwc``/``nchw``: the INT8 weighted sum with splits read in oneDNN's N x H x W x C layout in
    place, or in the plain layout; ``conv_*`` and ``sa_sum_f32_*`` likewise for the float32
    inference operators of :func:`~gluon_resnest.deploy.fast_inference`, ``conv_winograd`` its
    Winograd convolutions; ``train_nchw16c``/``train_library``: the float32 Split-Attention
    operators of training (forward and backward) reading oneDNN's nChw16c layout in place, or
    running through the operator-library interface (inputs reordered to the plain layout).
    """
    handle = _state['onednn']
    if not handle:
        raise NativeBuildError('the oneDNN-layout INT8 operator is not loaded')
    return {'nchw': int(handle.gluon_resnest_onednn_calls(0)),
            'nhwc': int(handle.gluon_resnest_onednn_calls(1)),
            'conv_nchw': int(handle.gluon_resnest_conv_calls(0)),
            'conv_nhwc': int(handle.gluon_resnest_conv_calls(1)),
            'sa_sum_f32_nchw': int(handle.gluon_resnest_sa_sum_nhwc_calls(0)),
            'sa_sum_f32_nhwc': int(handle.gluon_resnest_sa_sum_nhwc_calls(1)),
            'conv_winograd': _winograd_runs(),
            'train_nchw16c': int(handle.gluon_resnest_train_calls(1)),
            'train_library': int(handle.gluon_resnest_train_calls(0))}


def _winograd_runs() -> int:
    """How many ``gluon_resnest_conv`` runs were Winograd (0 without the oneDNN 3 library)."""
    path = _state['conv_path']
    if not path:
        return 0
    runs = ctypes.CDLL(path).grc_winograd_runs  # the library loaded already: the same handle
    runs.restype = ctypes.c_int64
    return int(runs())


def _operator_functions() -> dict[str, dict[str, object]]:
    """MXNet's generated operator functions, per module (``mx.nd``, ``mx.sym`` and theirs)."""
    prefixes = ('mxnet.ndarray', 'mxnet.symbol', 'mxnet.contrib.ndarray', 'mxnet.contrib.symbol')
    found = {}
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(prefixes):
            continue
        found[name] = {key: value for key, value in vars(module).items()
                       if callable(value) and getattr(value, '__module__', None) == name}
    return found


def _library_load(path: str) -> None:
    """``mx.library.load``, keeping MXNet's existing operator functions as they were.

    It regenerates every function of ``mx.nd``/``mx.sym``; code that imported one before (and
    compares it by identity, as GluonCV's FPN does with ``mx.sym.contrib.SyncBatchNorm``) would
    then hold a stale object. Only the library's own operators get new functions.
    """
    import mxnet as mx

    before = _operator_functions()
    mx.library.load(path, verbose=False)
    for name, functions in before.items():
        module = sys.modules.get(name)
        for key, value in functions.items():
            setattr(module, key, value)


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
                paths = _self_checked(_build_all())
                # The oneDNN library first: mx.library.load then adds functions to mx.nd and
                # mx.sym for the operators of both.
                if paths['onednn']:
                    try:
                        _load_onednn(str(paths['onednn']), paths['conv'])
                    except OSError as err:
                        _state['conv_error'] = f'the oneDNN-layout library is unavailable: {err}'
                        logger.info('gluon_resnest: INT8 Split-Attention operator through the '
                                    'operator-library interface instead: %s', err)
                        paths['ops'] = build(int8_operator=True)
                _library_load(str(paths['ops']))
                _state['loaded'] = paths['ops']
                _blocked_training()
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
