"""Read PyTorch ResNeSt checkpoints without PyTorch and convert them to our parameters.

GluonCV 0.10.5 refuses to import beside torch >= 2, so this module never imports torch. It reads

* ``torch.save`` files in the zip format (torch >= 1.6): a pickle ``*/data.pkl`` whose tensors
  point to raw storages ``*/data/<key>``;
* ``torch.save`` files in the legacy format (torch < 1.6, ``_use_new_zipfile_serialization=False``):
  a sequence of pickles followed by the raw storages, each behind an 8-byte element count;
* ``.safetensors`` files (how timm's weights are published on the Hugging Face hub).

The pickles are read by a restricted unpickler: tensors are rebuilt as numpy arrays from their
storages, ``OrderedDict`` is the only other class built for real, and every other global (for
example the ``argparse.Namespace`` that training scripts store next to the weights) becomes an
inert :class:`OpaqueObject`. Nothing in the file can make the unpickler run code.

Name mapping (:func:`torch_to_gluon_name`). Our names are GluonCV's. The authors' PyTorch models
(``resnest.torch``) and timm's ``resnest*`` models use the same state-dict keys as each other
(timm's ``SplitAttn`` keeps the authors' ``conv/bn0/fc1/bn1/fc2``; its deep stem is the same
``conv1.0..6`` sequential; its average-pool shortcut is ``downsample.0`` (pool, no parameters),
``.1`` conv, ``.2`` norm; the classifier is ``fc``). What differs from ours:

====================================  ====================================
PyTorch (authors', timm)              gluon_resnest (GluonCV)
====================================  ====================================
``<bn>.weight`` / ``<bn>.bias``       ``<bn>.gamma`` / ``<bn>.beta``
``<bn>.running_mean/var``             same
``<bn>.num_batches_tracked``          dropped
``layerX.Y.conv2.bn0.*``              ``layerX.Y.conv2.bn.*``
everything else                       same (conv, fc weights are laid out alike)
====================================  ====================================

A module is a BatchNorm when the state dict holds ``<module>.running_mean``. timm's checkpoints
differ from the authors' only around the weights: model names (:data:`TIMM_MODEL_NAMES`), the
training script's container (``{'state_dict': ..., 'state_dict_ema': ..., 'args': ...}``), a
``module.`` prefix left by ``DistributedDataParallel``, and the safetensors format.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from typing import Any, Mapping

import numpy as np

__all__ = ['TIMM_MODEL_NAMES', 'OpaqueObject', 'convert_checkpoint', 'convert_state_dict',
           'extract_state_dict', 'load_safetensors', 'load_torch_file', 'load_torch_state_dict',
           'torch_to_gluon_name']

logger = logging.getLogger(__name__)

#: timm's model names -> ours (same architectures; timm's suffix "d"/"e" names the stem).
TIMM_MODEL_NAMES = {
    'resnest14d': 'resnest14',
    'resnest26d': 'resnest26',
    'resnest50d': 'resnest50',
    'resnest101e': 'resnest101',
    'resnest200e': 'resnest200',
    'resnest269e': 'resnest269',
    'resnest50d_4s2x40d': 'resnest50_fast_4s2x40d',
    'resnest50d_1s4x24d': 'resnest50_fast_1s4x24d',
}

# torch storage class name -> numpy dtype. bfloat16 has no numpy type: read as uint16, widened.
_STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'BFloat16Storage': 'bfloat16', 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_SAFETENSORS_DTYPES = {
    'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': 'bfloat16',
    'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8,
    'BOOL': np.bool_,
}


class OpaqueObject:
    """Stand-in for any class of a checkpoint that is not a tensor or a dict; it runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f'{type(self).__name__}({getattr(self, "qualname", "?")})'


def _opaque_class(module: str, name: str) -> type:
    return type('Opaque', (OpaqueObject,), {'qualname': f'{module}.{name}'})


class _StorageType:
    """Marker for ``torch.<X>Storage`` globals: only its dtype matters."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _Storage:
    """A storage read from the file: flat numpy array of its elements."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple, stride: tuple,
                    *_: Any) -> np.ndarray:
    """numpy twin of ``torch._utils._rebuild_tensor_v2`` (offset, size and stride in elements)."""
    flat = storage.data
    size, stride = tuple(size), tuple(stride)
    if not size:
        return flat[offset:offset + 1].reshape(()).copy()
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size,
                                           strides=tuple(s * itemsize for s in stride))
    return np.ascontiguousarray(view)


def _rebuild_parameter(data: np.ndarray, *_: Any) -> np.ndarray:
    return data


_ALLOWED_GLOBALS = {
    ('collections', 'OrderedDict'): OrderedDict,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
}


def _to_numpy(raw: bytes, dtype: Any, byteorder: str = 'little') -> np.ndarray:
    if isinstance(dtype, str):  # bfloat16: the high half of a float32
        halves = np.frombuffer(raw, dtype=np.dtype('<u2' if byteorder == 'little' else '>u2'))
        return (halves.astype(np.uint32) << 16).view(np.float32)
    dt = np.dtype(dtype).newbyteorder('<' if byteorder == 'little' else '>')
    return np.frombuffer(raw, dtype=dt).astype(np.dtype(dtype).newbyteorder('='), copy=False)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that builds only tensors (as numpy arrays), dicts and inert stand-ins."""

    def __init__(self, file: Any, load_storage: Any) -> None:
        super().__init__(file)
        self._load_storage = load_storage
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == 'torch' and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == 'torch' and name == 'Size':
            return tuple
        logger.debug('checkpoint global %s.%s replaced by an inert stand-in', module, name)
        return _opaque_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] == 'storage'):
            raise pickle.UnpicklingError(f'unsupported persistent id {pid!r}')
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) > 5 else None
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f'unsupported storage type {storage_type!r}')
        key = str(key)
        if key not in self._storages:
            self._storages[key] = _Storage(self._load_storage(key, storage_type.dtype, numel))
        storage = self._storages[key]
        if view is not None:  # legacy views: (view_key, offset, size) into the root storage
            _view_key, offset, size = view
            return _Storage(storage.data[offset:offset + size])
        return storage


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl = [n for n in names if n.endswith('data.pkl')]
        if not pkl:
            raise ValueError(f'{path!r} is a zip file but not a PyTorch checkpoint '
                             f'(no data.pkl inside)')
        root = pkl[0][:-len('data.pkl')]
        byteorder = 'little'
        if f'{root}byteorder' in names:
            byteorder = archive.read(f'{root}byteorder').decode().strip()

        def load_storage(key: str, dtype: Any, _numel: int) -> np.ndarray:
            return _to_numpy(archive.read(f'{root}data/{key}'), dtype, byteorder)

        with archive.open(pkl[0]) as handle:
            return _RestrictedUnpickler(handle, load_storage).load()


def _plain_load(handle: Any) -> Any:
    """One pickle holding plain data only (every global becomes an inert stand-in)."""

    def no_storage(key: str, *_: Any) -> np.ndarray:
        raise pickle.UnpicklingError(f'unexpected storage {key!r} in a header pickle')

    return _RestrictedUnpickler(handle, no_storage).load()


def _load_legacy(path: str) -> Any:
    with open(path, 'rb') as handle:
        magic = _plain_load(handle)
        if magic != _LEGACY_MAGIC:
            raise ValueError(f'{path!r} is a pickle but not a PyTorch checkpoint')
        _plain_load(handle)  # protocol version
        sys_info = _plain_load(handle)
        if not isinstance(sys_info, dict):
            raise ValueError(f'{path!r} has a malformed header')
        byteorder = 'little' if sys_info.get('little_endian', True) else 'big'
        # The storages follow the object: a first pass learns their types, a second pass, once
        # they are read, rebuilds the tensors.
        wanted: dict[str, Any] = {}

        def note_storage(key: str, dtype: Any, numel: int) -> np.ndarray:
            wanted[key] = dtype
            return np.zeros(numel, dtype=np.float32 if isinstance(dtype, str) else dtype)

        start = handle.tell()
        _RestrictedUnpickler(handle, note_storage).load()
        keys = _plain_load(handle)
        storages = {}
        for key in keys:
            (count,) = struct.unpack('<q' if byteorder == 'little' else '>q', handle.read(8))
            dtype = wanted.get(key, np.uint8)
            width = 2 if isinstance(dtype, str) else np.dtype(dtype).itemsize
            raw = handle.read(count * width)
            if len(raw) != count * width:
                raise ValueError(f'{path!r} is truncated (storage {key})')
            storages[key] = _to_numpy(raw, dtype, byteorder)
        handle.seek(start)
        obj = _RestrictedUnpickler(handle, lambda key, dtype, numel: storages[key]).load()
    return obj


def load_safetensors(path: str) -> dict[str, np.ndarray]:
    """Read a ``.safetensors`` file into a name -> numpy array dict."""
    with open(path, 'rb') as handle:
        (length,) = struct.unpack('<Q', handle.read(8))
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f'{path!r} is not a safetensors file: {err}') from None
        body = handle.read()
    out = {}
    for name, info in header.items():
        if name == '__metadata__':
            continue
        if info['dtype'] not in _SAFETENSORS_DTYPES:
            raise ValueError(f'{path!r}: tensor {name!r} has unsupported dtype {info["dtype"]}')
        begin, end = info['data_offsets']
        flat = _to_numpy(body[begin:end], _SAFETENSORS_DTYPES[info['dtype']])
        out[name] = flat.reshape(info['shape']).copy()
    return out


def load_torch_file(path: str) -> Any:
    """Unpickle a ``torch.save`` file (zip or legacy) with tensors as numpy arrays.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file is not a PyTorch checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'no checkpoint file at {path!r}')
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    try:
        return _load_legacy(path)
    except (pickle.UnpicklingError, EOFError, struct.error, ValueError, AttributeError,
            IndexError, TypeError) as err:
        raise ValueError(f'{path!r} is not a PyTorch checkpoint: '
                         f'{type(err).__name__}: {err}') from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(v, np.ndarray) for v in obj.values())


def extract_state_dict(obj: Any, key: str | None = None,
                       source: str = 'checkpoint') -> dict[str, np.ndarray]:
    """Find the state dict inside a loaded checkpoint.

    Args:
        obj: What :func:`load_torch_file` returned.
        key: Entry holding the weights (e.g. ``'state_dict_ema'``); by default the object itself
            when it is a state dict, else the first of ``state_dict``, ``model``,
            ``model_state``, ``net``.
        source: File name for error messages.

    Returns:
        name -> array, with a common ``module.`` prefix removed.
    """
    candidates = [key] if key else ['state_dict', 'model', 'model_state', 'net']
    if key is None and _is_state_dict(obj):
        state = obj
    else:
        state = None
        if isinstance(obj, Mapping):
            for cand in candidates:
                if cand in obj and _is_state_dict(obj[cand]):
                    state = obj[cand]
                    break
        if state is None:
            found = sorted(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
            where = f'under {key!r}' if key else 'at the top level or under ' + \
                ', '.join(repr(c) for c in candidates)
            raise ValueError(f'{source!r} holds no state dict (name -> tensor) {where}; '
                             f'found: {found}')
    state = dict(state)
    if all(k.startswith('module.') for k in state):
        state = {k[len('module.'):]: v for k, v in state.items()}
    return state


def load_torch_state_dict(path: str, key: str | None = None) -> dict[str, np.ndarray]:
    """Read the state dict of a PyTorch checkpoint (``.pth``/``.pt``/``.safetensors``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'no checkpoint file at {path!r}')
    if path.endswith('.safetensors'):
        return extract_state_dict(load_safetensors(path), key, path)
    return extract_state_dict(load_torch_file(path), key, path)


def torch_to_gluon_name(name: str, norm_modules: set[str]) -> str | None:
    """Our name for a PyTorch state-dict key, or None for keys we drop (``num_batches_tracked``).

    Args:
        name: PyTorch key, e.g. ``layer1.0.conv2.bn0.weight``.
        norm_modules: Module paths that are BatchNorms (they have ``running_mean``).
    """
    module, _, leaf = name.rpartition('.')
    if leaf == 'num_batches_tracked':
        return None
    if module in norm_modules:
        leaf = {'weight': 'gamma', 'bias': 'beta'}.get(leaf, leaf)
    if module.endswith('.conv2.bn0'):
        module = module[:-len('bn0')] + 'bn'
    return f'{module}.{leaf}' if module else leaf


def convert_state_dict(state: Mapping[str, np.ndarray], net: Any,
                       source: str = 'checkpoint') -> dict[str, np.ndarray]:
    """Rename a PyTorch ResNeSt state dict to ``net``'s parameter names and check every shape.

    Args:
        state: PyTorch key -> array.
        net: Our network (its parameters need not be initialised).
        source: Name of the checkpoint for error messages.

    Returns:
        Our name -> float32 array, ready for ``mx.nd.save`` (a ``save_parameters`` file).

    Raises:
        ValueError: The checkpoint does not fit ``net``; the message names the tensor.
    """
    norm_modules = {k[:-len('.running_mean')] for k in state if k.endswith('.running_mean')}
    converted: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        ours = torch_to_gluon_name(key, norm_modules)
        if ours is None:
            continue
        converted[ours] = np.asarray(value, dtype=np.float32)
        origin[ours] = key
    name = getattr(net, 'model_name', type(net).__name__)
    params = net._collect_params_with_prefix()  # pylint: disable=protected-access
    for key, param in params.items():
        if key not in converted:
            raise ValueError(f'{source!r} does not fit {name}: no tensor for our parameter '
                             f'{key!r} (shape {param.shape}); is it a checkpoint of another '
                             f'architecture?')
        shape = tuple(converted[key].shape)
        if 0 not in param.shape and shape != tuple(param.shape):
            raise ValueError(f'{source!r} does not fit {name}: tensor {origin[key]!r} has shape '
                             f'{shape} but our parameter {key!r} has shape '
                             f'{tuple(param.shape)}; is it a checkpoint of another '
                             f'architecture?')
    extra = [k for k in converted if k not in params]
    if extra:
        raise ValueError(f'{source!r} does not fit {name}: tensor {origin[extra[0]]!r} '
                         f'({len(extra)} in all) has no counterpart in our model')
    return converted


def convert_checkpoint(path: str, model: str, output: str | None = None,
                       classes: int | None = None, key: str | None = None) -> Any:
    """Read a PyTorch checkpoint into a new network of ours, optionally saving ``.params``.

    Args:
        path: Checkpoint file.
        model: Our model name or timm's (:data:`TIMM_MODEL_NAMES`).
        output: ``.params`` file to write, if any.
        classes: Classifier outputs; by default the checkpoint's ``fc.weight`` rows.
        key: Checkpoint entry holding the weights (see :func:`extract_state_dict`).

    Returns:
        The network with the converted parameters loaded (on CPU).
    """
    import mxnet as mx

    from ..model_zoo import get_model
    from ..params import save_params
    from ..registry import lookup

    name = TIMM_MODEL_NAMES.get(str(model).lower(), model)
    lookup(name)  # a wrong name fails before the file is read
    state = load_torch_state_dict(path, key)
    if classes is None:
        classes = int(state['fc.weight'].shape[0]) if 'fc.weight' in state else 1000
    net = get_model(name, classes=classes)
    converted = convert_state_dict(state, net, path)
    net.initialize(ctx=mx.cpu())
    for pname, param in net._collect_params_with_prefix().items():  # pylint: disable=W0212
        param.set_data(mx.nd.array(converted[pname]))
    if output:
        save_params(converted, output)
    return net
