"""Deployment: export to MXNet's symbol/params format, reload, ONNX, the evaluation transform.

An export written by :func:`export_network` is three files:

* ``PREFIX-symbol.json`` and ``PREFIX-%04d.params``: MXNet's ``HybridBlock.export`` format, which
  ``mx.gluon.SymbolBlock.imports`` and ``mx.mod.Module`` read;
* ``PREFIX-meta.json``: what a consumer needs to feed the network (:data:`META_DEFAULTS`): input
  size, mean/std, and whether the normalisation is inside the graph (``preprocess``, in which
  case the exported network takes 0-255 RGB input). Tools that rewrite an export (the quantizer)
  keep this file and may add keys.

A prefix without a meta file (an export made elsewhere) is read with :data:`META_DEFAULTS`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import warnings
from typing import Any, Iterator, Sequence

import mxnet as mx
import numpy as np
from mxnet.gluon import nn

from .errors import InputError, mxnet_reason
from .layers import DropBlock, set_drop_prob
from .models.resnest import load_param_file

__all__ = ['IMAGENET_MEAN', 'IMAGENET_STD', 'META_DEFAULTS', 'Normalize', 'build_network',
           'check_export', 'eval_transform', 'onnx_compatible_symbol',
           'export_network', 'export_onnx', 'export_paths', 'load_class_names', 'load_exported',
           'load_network',
           'load_image', 'read_meta', 'read_model_spec', 'resize_size', 'verify_onnx',
           'write_meta']

logger = logging.getLogger(__name__)

#: ImageNet RGB mean and standard deviation on the 0-255 scale.
IMAGENET_MEAN = (123.68, 116.779, 103.939)
IMAGENET_STD = (58.393, 57.12, 57.375)
#: File beside a parameter file that says how to rebuild its network.
MODEL_SPEC = 'model.json'
#: Ratio of the center crop to the resized short side in the paper's evaluation transform.
CROP_RATIO = 0.875

META_DEFAULTS: dict[str, Any] = {
    'format': 'gluon_resnest-export',
    'version': 1,
    'model': None,           # registered model name, when known
    'input_size': 224,       # square crop the network was exported for
    'in_channels': 3,
    'mean': list(IMAGENET_MEAN),
    'std': list(IMAGENET_STD),
    'preprocess': False,     # True: the graph normalises; feed 0-255 RGB
    'classes': None,         # number of outputs
    'class_names': None,     # file (next to the export) with one class name per line
    'input_names': ['data'],
    'quantized': False,
}


class Normalize(nn.HybridBlock):
    """``(x - mean) / std`` per channel, with mean/std stored as constants of the graph."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f'mean and std need one entry per channel and std > 0, '
                             f'got mean={mean}, std={std}')
        shape = (1, len(mean), 1, 1)
        with self.name_scope():
            self.mean = self.params.get_constant(
                'mean', mx.nd.array(np.asarray(mean, dtype=np.float32).reshape(shape)))
            self.scale = self.params.get_constant(
                'scale', mx.nd.array((1.0 / np.asarray(std, dtype=np.float32)).reshape(shape)))

    def hybrid_forward(self, F, x, mean, scale):  # noqa: N803 - MXNet's convention
        return F.broadcast_mul(F.broadcast_sub(x, mean), scale)


class _Preprocessed(nn.HybridBlock):
    """A network with :class:`Normalize` in front of it."""

    def __init__(self, net: nn.HybridBlock, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__(prefix='')
        with self.name_scope():
            self.normalize = Normalize(mean, std, prefix='preprocess_')
        self.net = net

    def hybrid_forward(self, F, x):  # noqa: N803 - MXNet's convention
        return self.net(self.normalize(x))


def export_paths(prefix: str, epoch: int = 0) -> tuple[str, str, str]:
    """File names of an export: ``(symbol, params, meta)``."""
    return f'{prefix}-symbol.json', f'{prefix}-{epoch:04d}.params', f'{prefix}-meta.json'


def write_meta(prefix: str, **fields: Any) -> str:
    """Write ``PREFIX-meta.json`` (defaults for missing keys); return its path."""
    meta = dict(META_DEFAULTS)
    meta.update(fields)
    path = export_paths(prefix)[2]
    with open(path, 'w', encoding='utf-8') as handle:
        json.dump(meta, handle, indent=2, sort_keys=True)
        handle.write('\n')
    return path


def read_meta(prefix: str) -> dict[str, Any]:
    """Read ``PREFIX-meta.json``, filling missing keys from :data:`META_DEFAULTS`."""
    meta = dict(META_DEFAULTS)
    path = export_paths(prefix)[2]
    if os.path.isfile(path):
        with open(path, 'rb') as handle:
            try:
                loaded = json.loads(handle.read().decode('utf-8'))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ValueError(f'{path!r} is not valid JSON: {err}') from None
        if not isinstance(loaded, dict):
            raise InputError('not a JSON object of export settings', path)
        meta.update(loaded)
    else:
        logger.warning('%s not found: assuming input size %d, ImageNet mean/std, no embedded '
                       'preprocessing', path, meta['input_size'])
    return meta


def _first_context(net: nn.Block) -> mx.Context:
    for param in net.collect_params().values():
        try:
            return param.list_ctx()[0]
        except RuntimeError:  # deferred initialisation: no context yet
            break
    return mx.cpu()


def export_network(net: nn.HybridBlock, prefix: str, input_size: int = 224, epoch: int = 0,
                   preprocess: bool = False, classes: int | Sequence[str] | None = None,
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   model_name: str | None = None,
                   model_kwargs: dict[str, Any] | None = None) -> tuple[str, str]:
    """Export an initialised network to ``PREFIX-symbol.json``/``PREFIX-%04d.params`` + meta.

    Side effects on ``net``: it is hybridized, and every :class:`~gluon_resnest.layers.DropBlock`
    with a non-zero probability is set to 0 (through :func:`gluon_resnest.layers.set_drop_prob`;
    this touches DropBlock only, and matters only for further training of ``net``) so that the
    exported graph holds no random ops.

    Args:
        net: Initialised network.
        prefix: Output prefix; its folder is created.
        input_size: Square input size traced and recorded in the meta file.
        epoch: Number in the params file name.
        preprocess: Put ``(x - mean) / std`` in the graph, so the export takes 0-255 RGB.
        classes: Number of classes or their names (written to ``PREFIX.classes``, one per
            line); by default the width of the network's output.
        mean: Per-channel mean on the 0-255 scale.
        std: Per-channel standard deviation on the 0-255 scale.
        model_name: Recorded in the meta file; defaults to ``net.model_name`` when present.
        model_kwargs: Architecture arguments the network was built with, recorded in the meta
            file so the model can be rebuilt from it.

    Returns:
        ``(symbol_file, params_file)``.
    """
    if not os.path.basename(prefix) or os.path.isdir(prefix):
        raise InputError('the export prefix is a folder; give a file name prefix such as '
                         'FOLDER/model', prefix)
    if any(isinstance(b, DropBlock) and b.drop_prob > 0 for b in _blocks(net)):
        set_drop_prob(net, 0.0)
        logger.info('DropBlock probabilities set to 0 for the export')
    in_channels = getattr(net, 'in_channels', 3)
    block = _Preprocessed(net, mean, std) if preprocess else net
    if preprocess:
        block.normalize.initialize(ctx=_first_context(net))
    block.hybridize()
    data = mx.nd.zeros((1, in_channels, input_size, input_size), ctx=_first_context(net))
    try:
        out = block(data)
    except RuntimeError as err:
        if 'initialize' in str(err) or 'has not been initialized' in str(err):
            raise ValueError('export_network needs an initialised network: call '
                             'net.initialize() or load parameters first') from None
        raise
    folder = os.path.dirname(os.path.abspath(prefix))
    os.makedirs(folder, exist_ok=True)
    block.export(prefix, epoch=epoch)
    symbol_file, params_file, _ = export_paths(prefix, epoch)
    outputs = out if isinstance(out, (list, tuple)) else [out]
    names_file = None
    if classes is not None and not isinstance(classes, int):
        names = [str(c) for c in classes]
        names_file = f'{os.path.basename(prefix)}.classes'
        with open(f'{prefix}.classes', 'w', encoding='utf-8') as handle:
            handle.write('\n'.join(names) + '\n')
        classes = len(names)
    if classes is None and len(outputs) == 1 and outputs[0].ndim == 2:
        classes = int(outputs[0].shape[1])
    write_meta(prefix, model=model_name or getattr(net, 'model_name', None),
               input_size=int(input_size), in_channels=int(in_channels),
               mean=[float(m) for m in mean], std=[float(s) for s in std],
               preprocess=bool(preprocess), classes=classes, class_names=names_file,
               epoch=int(epoch), model_kwargs=dict(model_kwargs or {}))
    logger.info('exported %s and %s', symbol_file, params_file)
    return symbol_file, params_file


def _blocks(net: nn.Block) -> list[nn.Block]:
    found: list[nn.Block] = []
    net.apply(found.append)
    return found


def _available_epochs(prefix: str) -> list[int]:
    folder = os.path.dirname(os.path.abspath(prefix))
    pattern = re.compile(re.escape(os.path.basename(prefix)) + r'-(\d{4})\.params$')
    if not os.path.isdir(folder):
        return []
    return sorted(int(m.group(1)) for m in map(pattern.match, os.listdir(folder)) if m)


def check_export(prefix: str, epoch: int = 0) -> tuple[str, str]:
    """The symbol and params files of an export, or a FileNotFoundError naming what is missing."""
    symbol_file, params_file, _ = export_paths(prefix, epoch)
    if not os.path.isfile(symbol_file):
        raise FileNotFoundError(f'no exported symbol file {symbol_file!r} (prefix {prefix!r})')
    if not os.path.isfile(params_file):
        epochs = _available_epochs(prefix)
        hint = f'; epochs available: {epochs}' if epochs else ''
        raise FileNotFoundError(f'no exported params file {params_file!r}{hint}')
    return symbol_file, params_file


def _read_export(symbol_file: str,
                 params_file: str) -> tuple[mx.sym.Symbol, dict[str, mx.nd.NDArray]]:
    """Symbol and saved arrays of an export, with a ValueError naming a file MXNet rejects."""
    try:
        symbol = mx.sym.load(symbol_file)
    except (mx.base.MXNetError, UnicodeDecodeError) as err:
        raise ValueError(f'{symbol_file!r} is not an MXNet symbol file: '
                         f'{mxnet_reason(err)}') from None
    return symbol, load_param_file(params_file)


def load_exported(prefix: str, epoch: int = 0,
                  ctx: Any = None) -> tuple[mx.gluon.SymbolBlock, dict[str, Any]]:
    """Load an export as a ``SymbolBlock`` together with its meta data.

    Args:
        prefix: Prefix given to :func:`export_network` (or to ``HybridBlock.export``).
        epoch: Number in the params file name.
        ctx: Context (or list of contexts); default CPU.

    Returns:
        ``(net, meta)``; ``meta`` as :func:`read_meta` returns it.
    """
    symbol_file, params_file = check_export(prefix, epoch)
    meta = read_meta(prefix)
    symbol, saved = _read_export(symbol_file, params_file)
    stored = {k.split(':', 1)[-1] for k in saved}
    inputs = [a for a in symbol.list_arguments() if a not in stored]
    meta['input_names'] = inputs
    with warnings.catch_warnings():
        # SymbolBlock.imports warns that the input's type is unknown; it is float32.
        warnings.filterwarnings('ignore', message='Cannot decide type')
        try:
            net = mx.gluon.SymbolBlock.imports(symbol_file, inputs, params_file,
                                               ctx=ctx or mx.cpu())
        except (AssertionError, mx.base.MXNetError) as err:
            # Gluon reports parameters that do not fit the graph with an assertion.
            reason = mxnet_reason(err).split(', which contains')[0]
            raise InputError(f'parameters do not fit the symbol {symbol_file}: {reason}',
                             params_file) from None
    return net, meta


def export_onnx(prefix: str, output: str, epoch: int = 0,
                input_size: int | None = None) -> str:
    """Convert an export to ONNX with a dynamic batch axis; return the ONNX file name.

    The meta data of the export is copied into the ONNX model's ``metadata_props``
    (key ``gluon_resnest``, JSON).
    """
    import onnx  # local: optional dependency

    symbol_file, params_file = check_export(prefix, epoch)
    meta = read_meta(prefix)
    size = int(input_size or meta['input_size'])
    channels = int(meta.get('in_channels') or 3)
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    symbol, saved = _read_export(symbol_file, params_file)
    symbol = onnx_compatible_symbol(symbol, (channels, size, size))
    params = {k.split(':', 1)[-1]: v for k, v in saved.items()}
    with _onnx_compat(onnx):
        mx.onnx.export_model(symbol, params, in_shapes=[(1, channels, size, size)],
                             in_types=[np.float32], onnx_file_path=output, dynamic=True,
                             dynamic_input_shapes=[(None, channels, size, size)])
    model = onnx.load(output)
    entry = model.metadata_props.add()
    entry.key = 'gluon_resnest'
    entry.value = json.dumps(dict(meta, input_size=size))
    onnx.save(model, output)
    return output


def onnx_compatible_symbol(symbol: mx.sym.Symbol, sample_shape: Sequence[int],
                           input_name: str = 'data') -> mx.sym.Symbol:
    """Rewrite ``Reshape`` ops whose shape uses MXNet's special codes (-2, -3, -4) for ONNX.

    MXNet 1.9's ONNX exporter rejects most of those codes, which the Split-Attention block uses
    to split and merge the radix axis. For a fixed image size every such reshape has a known
    output shape; it is written as ``(0, d1, d2, ...)`` (0: copy the batch axis), so the ONNX
    graph keeps a dynamic batch. Everything else is left as it is.

    Args:
        symbol: The network's symbol.
        sample_shape: ``(C, H, W)`` of one input.
        input_name: Name of the data input.
    """
    batch = 7  # a batch size no other axis is likely to equal, to tell the batch axis apart
    internals = symbol.get_internals()
    _, out_shapes, _ = internals.infer_shape(**{input_name: (batch, *sample_shape)})
    shapes = dict(zip(internals.list_outputs(), out_shapes))
    graph = json.loads(symbol.tojson())
    changed = 0
    for node in graph['nodes']:
        if node['op'] != 'Reshape':
            continue
        attrs = node.get('attrs', {})
        target = [int(v) for v in re.findall(r'-?\d+', attrs.get('shape', ''))]
        if not any(v in (-2, -3, -4) for v in target) and attrs.get('reverse') != 'True':
            continue
        out = shapes[f'{node["name"]}_output']
        if out[0] != batch:
            raise ValueError(f'cannot make reshape {node["name"]!r} ONNX-compatible: its output '
                             f'{out} does not keep the batch axis first')
        attrs['shape'] = str(tuple([0, *out[1:]]))
        attrs.pop('reverse', None)
        changed += 1
    logger.debug('%d reshapes rewritten with static shapes for ONNX', changed)
    return mx.sym.load_json(json.dumps(graph))


#: Highest ONNX opset MXNet 1.9's exporter has translations for.
MXNET_ONNX_OPSET = 13


@contextlib.contextmanager
def _onnx_compat(onnx: Any) -> Iterator[None]:
    """Let MXNet 1.9's ONNX exporter run with a current onnx package.

    The exporter (i) reads ``onnx.mapping``, which onnx >= 1.19 removed: the two tables it uses
    are rebuilt from ``onnx.helper``; (ii) stamps the model with the package's latest opset,
    ``onnx.defs.onnx_opset_version()``, although its translations stop at opset 13 (e.g. it
    writes ReduceMean's ``axes`` as an attribute, an input since opset 18), so the result would
    fail the checker: that function, and the checker's default context, answer
    :data:`MXNET_ONNX_OPSET` while the export runs. All is restored afterwards.
    """
    import types

    added_mapping = not hasattr(onnx, 'mapping')
    if added_mapping:
        np_to_onnx = {}
        for name in ('float32', 'float16', 'float64', 'int8', 'int16', 'int32', 'int64',
                     'uint8', 'uint16', 'uint32', 'uint64', 'bool'):
            np_to_onnx[np.dtype(name)] = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(name))
        mapping = types.ModuleType('onnx.mapping')
        mapping.NP_TYPE_TO_TENSOR_TYPE = np_to_onnx
        mapping.TENSOR_TYPE_TO_NP_TYPE = {v: k for k, v in np_to_onnx.items()}
        onnx.mapping = mapping
    latest = onnx.defs.onnx_opset_version
    opset = min(latest(), MXNET_ONNX_OPSET)
    checker_context = onnx.checker.DEFAULT_CONTEXT
    checker_opsets = dict(checker_context.opset_imports)
    onnx.defs.onnx_opset_version = lambda: opset
    checker_context.opset_imports = dict(checker_opsets, **{'': opset})
    try:
        yield
    finally:
        onnx.defs.onnx_opset_version = latest
        checker_context.opset_imports = checker_opsets
        if added_mapping:
            del onnx.mapping


def resize_size(crop: int) -> int:
    """Short side before the center crop: ``ceil(crop / 0.875)`` (224 -> 256)."""
    return int(math.ceil(crop / CROP_RATIO))


def load_image(path: str) -> np.ndarray:
    """Decode an image file to an HWC uint8 RGB array, exactly as packing and training see it.

    See :func:`gluon_resnest.data.pack.read_image`: transparency composited on white, EXIF
    orientation applied, every format the packer accepts (GIF, 16-bit and float TIFF, ...).

    Raises:
        FileNotFoundError: no such file.
        InputError: an unreadable file (a ``ValueError`` naming it).
    """
    from .data.pack import read_image

    return read_image(path)


def eval_transform(img: np.ndarray | mx.nd.NDArray, crop: int = 224,
                   mean: Sequence[float] | None = IMAGENET_MEAN,
                   std: Sequence[float] | None = IMAGENET_STD) -> mx.nd.NDArray:
    """The paper's evaluation transform: resize short side to ``ceil(crop/0.875)``, center crop.

    The same code as the validation loader (:class:`gluon_resnest.data.ValTransform`), so a
    prediction and an evaluation see identical pixels.

    Args:
        img: HWC uint8 RGB image.
        crop: Side of the square crop.
        mean: Subtracted per channel (0-255 scale); None leaves 0-255 values (for exports made
            with ``preprocess=True``).
        std: Divided per channel; None with ``mean=None``.

    Returns:
        A float32 ``(1, 3, crop, crop)`` batch.
    """
    from .data import ValTransform

    if isinstance(img, mx.nd.NDArray):
        img = img.asnumpy()
    if mean is None:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    transform = ValTransform(crop, mean, std, CROP_RATIO)
    out = np.empty((3, transform.crop, transform.crop), np.float32)
    transform(np.ascontiguousarray(img, dtype=np.uint8), out)
    return mx.nd.array(out[None])


def load_class_names(path: str) -> list[str]:
    """Class names, one per line (blank lines ignored)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'no classes file at {path!r}')
    if os.path.isdir(path):
        raise InputError('the classes file is a folder', path)
    try:
        with open(path, encoding='utf-8') as handle:
            return [line.strip() for line in handle if line.strip()]
    except UnicodeDecodeError:
        raise InputError('not a text file of class names', path) from None


def build_network(model: str, params: str | None = None, classes: int | None = None,
                  ctx: Any = None, **kwargs: Any) -> nn.HybridBlock:
    """A registered model with parameters from ``params`` (or freshly initialised without).

    A ``model.json`` beside ``params`` (every training checkpoint has one) supplies the
    architecture arguments the network was trained with (e.g. a recipe's ``stem_width``) and
    its class count; ``kwargs`` and ``classes`` override them.

    Args:
        model: Registered model name.
        params: ``save_parameters`` file; None initialises the network (random weights).
        classes: Classifier outputs; by default read from the file's ``fc.weight`` (1000
            without a file).
        ctx: Context; default CPU.
        **kwargs: Architecture overrides for :func:`gluon_resnest.get_model`.
    """
    from .model_zoo import get_model
    from .models.resnest import load_param_file

    ctx = ctx or mx.cpu()
    if params is not None:
        if not os.path.isfile(params):
            raise FileNotFoundError(f'no parameter file at {params!r}')
        spec = read_model_spec(params)
        if spec:
            if str(spec.get('model', model)).lower() != model.lower():
                raise InputError(f'these parameters belong to a {spec["model"]}, not a '
                                 f'{model}', params)
            kwargs = {**spec.get('model_kwargs', {}), **kwargs}
            classes = classes or spec.get('classes')
        if classes is None:
            fc = load_param_file(params).get('fc.weight')
            classes = int(fc.shape[0]) if fc is not None else 1000
    try:
        net = get_model(model, classes=classes or 1000, **kwargs)
    except TypeError as err:
        raise InputError(f'{model} cannot be built with {kwargs}: {err}') from None
    if params is None:
        net.initialize(ctx=ctx)
    else:
        net.load_parameters(params, ctx=ctx)
    return net


def read_model_spec(params: str) -> dict[str, Any] | None:
    """The ``model.json`` beside a parameter file (model, classes, model_kwargs), or None."""
    path = os.path.join(os.path.dirname(os.path.abspath(params)), MODEL_SPEC)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding='utf-8') as handle:
            spec = json.load(handle)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f'not a JSON model description: {err}', path) from None
    if not isinstance(spec, dict) or not isinstance(spec.get('model_kwargs', {}), dict):
        raise InputError('not a model description (model, classes, model_kwargs)', path)
    return spec


def load_network(prefix: str | None = None, model: str | None = None,
                 params: str | None = None, epoch: int = 0,
                 ctx: Any = None) -> tuple[nn.HybridBlock, dict[str, Any]]:
    """The network a tool runs, with its meta data: an export, or a model and its parameters.

    Args:
        prefix: An export's prefix (read with :func:`load_exported`).
        model: Otherwise a registered model name, built by :func:`build_network` from ``params``
            and hybridized; its meta is :data:`META_DEFAULTS` (224 input, ImageNet mean/std,
            normalisation outside the graph).
        params: ``save_parameters`` file for ``model``.
        epoch: Number in the export's params file name.
        ctx: Context (or list of contexts); default CPU.
    """
    if (prefix is None) == (model is None):
        raise ValueError('give either an export prefix or a model name')
    if prefix is not None:
        return load_exported(prefix, epoch, ctx=ctx)
    net = build_network(model, params, ctx=ctx)
    net.hybridize(static_alloc=True, static_shape=True)
    return net, dict(META_DEFAULTS, model=model, classes=getattr(net, 'classes', None))


def verify_onnx(prefix: str, onnx_file: str, epoch: int = 0, input_size: int | None = None,
                batch_size: int = 2, seed: int = 0) -> tuple[float, float]:
    """Run an ONNX file with onnxruntime and the export with MXNet on the same random batch.

    The input is uniform in [0, 255] for exports with embedded preprocessing, standard normal
    otherwise.

    Returns:
        ``(max abs difference, largest abs MXNet output)``.
    """
    import onnxruntime

    net, meta = load_exported(prefix, epoch)
    size = int(input_size or meta['input_size'])
    rng = np.random.RandomState(seed)
    shape = (batch_size, int(meta.get('in_channels') or 3), size, size)
    data = (rng.uniform(0, 255, shape) if meta['preprocess'] else rng.randn(*shape))
    data = data.astype(np.float32)
    expected = net(mx.nd.array(data)).asnumpy()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # the exporter leaves unused initialisers: not worth a warning
    session = onnxruntime.InferenceSession(onnx_file, options,
                                           providers=['CPUExecutionProvider'])
    actual = session.run(None, {session.get_inputs()[0].name: data})[0]
    if actual.shape != expected.shape:
        raise ValueError(f'ONNX output shape {actual.shape} differs from MXNet\'s '
                         f'{expected.shape}')
    return float(np.abs(actual - expected).max()), float(np.abs(expected).max())
