"""Export a network to MXNet's symbol/params format with its meta file, and load it back.

See :mod:`gluon_resnest.deploy.meta` for the files of an export.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from typing import Any, Sequence

import mxnet as mx
from mxnet.gluon import nn

from .. import native, threads
from ..atomic import (
    CHECKSUM_KEY,
    FileSet,
    make_folder,
    temporary_name,
    verify_checksums,
    write_failure,
)
from ..constants import DEFAULT_CROP
from ..errors import InputError, mxnet_reason
from ..layers import DropBlock, set_drop_prob, unfused_norm_relu
from ..models.info import model_info
from ..params import first_context, load_param_file
from .graph import strip_amp_casts
from .meta import META_DEFAULTS, check_export, export_paths, meta_document, read_meta, verify_export
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, Normalize

__all__ = ['MODEL_SPEC', 'build_network', 'export_network', 'load_exported', 'load_network',
           'read_export', 'read_model_spec', 'write_export']

logger = logging.getLogger(__name__)

#: File beside a parameter file that says how to rebuild its network.
MODEL_SPEC = 'model.json'


class _Preprocessed(nn.HybridBlock):
    """A network with :class:`Normalize` in front of it."""

    def __init__(self, net: nn.HybridBlock, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__(prefix='')
        with self.name_scope():
            self.normalize = Normalize(mean, std, prefix='preprocess_')
        self.net = net

    def hybrid_forward(self, F, x):  # noqa: N803 - MXNet's convention
        return self.net(self.normalize(x))


def export_network(net: nn.HybridBlock, prefix: str, input_size: int = DEFAULT_CROP, epoch: int = 0,
                   preprocess: bool = False, classes: int | Sequence[str] | None = None,
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   model_name: str | None = None,
                   model_kwargs: dict[str, Any] | None = None,
                   fast: bool = False, winograd: bool = True,
                   dtype: str = 'float32') -> tuple[str, str]:
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
        fast: Export the float32 CPU inference graph on gluon_resnest's oneDNN 3 operators
            (:func:`~gluon_resnest.deploy.fast_inference.fast_inference`; BatchNorms folded).
            Loading it needs those operators (:func:`load_exported` loads them).
        winograd: With ``fast``, run the 3 x 3 convolutions of stride 1 as Winograd
            F(4 x 4, 3 x 3) (faster; rounds slightly differently from a direct convolution).
        dtype: With ``fast``, ``'bfloat16'`` exports the bfloat16 graph (feature maps and
            convolutions in bfloat16; float32 input and output; recorded in the meta file as
            ``compute_dtype``). It needs a CPU with AVX512_BF16 or AMX here and where it is
            loaded.

    Returns:
        ``(symbol_file, params_file)``.

    Raises:
        ValueError: ``dtype`` is ``'bfloat16'`` without ``fast``, or neither ``'float32'`` nor
            ``'bfloat16'``.
        gluon_resnest.native.NativeBuildError: ``fast`` and the operators (for bfloat16: or
            the CPU's bfloat16 instructions) are unavailable here.
    """
    if dtype not in ('float32', 'bfloat16'):
        raise ValueError(f"dtype: one of float32, bfloat16, got {dtype!r}")
    if dtype == 'bfloat16' and not fast:
        raise ValueError('dtype bfloat16 applies to the fast graph only (fast=True)')
    if not os.path.basename(prefix) or os.path.isdir(prefix):
        raise InputError('the export prefix is a folder; give a file name prefix such as '
                         'FOLDER/model', prefix)
    if any(isinstance(b, DropBlock) and b.drop_prob > 0 for b in _blocks(net)):
        set_drop_prob(net, 0.0)
        logger.info('DropBlock probabilities set to 0 for the export')
    in_channels = getattr(net, 'in_channels', 3)
    block = _Preprocessed(net, mean, std) if preprocess else net
    if preprocess:
        block.normalize.initialize(ctx=first_context(net))
    data = mx.nd.zeros((1, in_channels, input_size, input_size), ctx=first_context(net))
    # A network built for CPU training (native=True) runs BatchNorm and ReLU as one oneDNN
    # operator; the export holds MXNet's separate operators, which every build and ONNX know.
    with unfused_norm_relu(net):
        block.hybridize()
        try:
            out = block(data)
        except RuntimeError as err:
            if 'initialize' in str(err) or 'has not been initialized' in str(err):
                raise ValueError('export_network needs an initialised network: call '
                                 'net.initialize() or load parameters first') from None
            raise
        if fast:
            from .fast_inference import fast_inference
            block = fast_inference(block, data, winograd=winograd, strict=True, dtype=dtype)
        outputs = out if isinstance(out, (list, tuple)) else [out]
        names = None
        if classes is not None and not isinstance(classes, int):
            names = [str(c) for c in classes]
            classes = len(names)
        if classes is None and len(outputs) == 1 and outputs[0].ndim == 2:
            classes = int(outputs[0].shape[1])
        fields = dict(model=model_name or getattr(net, 'model_name', None),
                      input_size=int(input_size), in_channels=int(in_channels),
                      mean=[float(m) for m in mean], std=[float(s) for s in std],
                      preprocess=bool(preprocess), classes=classes, epoch=int(epoch),
                      model_kwargs=dict(model_kwargs or {}), fast=bool(fast),
                      native_operators=native.operators_in(
                          block(mx.sym.var('data')).tojson()) if fast else [])
        if dtype == 'bfloat16':
            fields['compute_dtype'] = dtype
        symbol_file, params_file = write_export(block, prefix, epoch, fields, names)
    logger.info('exported %s and %s', symbol_file, params_file)
    return symbol_file, params_file


def write_export(block: nn.HybridBlock, prefix: str, epoch: int, fields: dict[str, Any],
                 class_names: Sequence[str] | None = None) -> tuple[str, str]:
    """Write a traced block's export as one set (:class:`~gluon_resnest.atomic.FileSet`).

    The symbol, the parameters, the class names (``PREFIX.classes``) and, last, the meta file
    with ``fields`` and the SHA-256 of the others. The files are checked to load before they
    are renamed into place: a failure (a full disk, a read-only folder, a signal) leaves the
    previous export as it was and no temporary file.

    Args:
        block: A hybridized block that has run once.
        prefix: Output prefix; its folder is created.
        epoch: Number in the params file name.
        fields: Meta file entries (:func:`~gluon_resnest.deploy.meta.meta_document`).
        class_names: Written to ``PREFIX.classes`` and named in the meta file.

    Returns:
        ``(symbol_file, params_file)``.
    """
    symbol_file, params_file, meta_file = export_paths(prefix, epoch)
    names_file = f'{prefix}.classes'
    folder = os.path.dirname(os.path.abspath(prefix))
    make_folder(folder)
    staging = temporary_name(prefix)
    with FileSet(stale=[prefix, symbol_file, params_file, meta_file, names_file]) as files:
        tmp_symbol = files.temp(symbol_file, f'{staging}-symbol.json')
        tmp_params = files.temp(params_file, f'{staging}-{epoch:04d}.params')
        try:
            block.export(staging, epoch=epoch)
        except mx.base.MXNetError as err:
            failed = symbol_file if os.path.getsize(tmp_symbol) == 0 else params_file
            raise write_failure(err, failed) from None
        try:
            symbol = mx.sym.load(tmp_symbol)
            if any(op in symbol.tojson() for op in ('"amp_cast"', '"amp_multicast"')):
                # Traced under AMP (mixed-precision training): the export is the FP32 model.
                strip_amp_casts(symbol).save(tmp_symbol)
                logger.info('removed the mixed-precision casts from %s', symbol_file)
                mx.sym.load(tmp_symbol)
        except (mx.base.MXNetError, OSError) as err:
            raise write_failure(err, symbol_file) from None
        try:
            mx.nd.load(tmp_params)  # a write the file system cut short does not load
        except mx.base.MXNetError as err:
            raise write_failure(err, params_file) from None
        fields = dict(fields, class_names=None)
        if class_names is not None:
            files.write_text(names_file, '\n'.join(class_names) + '\n')
            fields['class_names'] = os.path.basename(names_file)
        files.write_json(meta_file, meta_document(**fields, **{CHECKSUM_KEY: files.checksums()}))
        files.commit()
    return symbol_file, params_file


def _blocks(net: nn.Block) -> list[nn.Block]:
    found: list[nn.Block] = []
    net.apply(found.append)
    return found


def read_export(symbol_file: str,
                 params_file: str) -> tuple[mx.sym.Symbol, dict[str, mx.nd.NDArray]]:
    """Symbol and saved arrays of an export, with a ValueError naming a file MXNet rejects.

    A symbol that calls gluon_resnest's native operators (an INT8 export) loads them first.
    """
    try:
        with open(symbol_file, 'rb') as handle:
            text = handle.read().decode('utf-8', errors='replace')
    except OSError as err:
        raise InputError(err.strerror or str(err), symbol_file) from None
    if native.uses_native(text):
        try:
            native.load(required=True)
        except native.NativeBuildError as err:
            reason = str(err).splitlines()[0]
            raise InputError(f'this export needs gluon_resnest\'s native operators: {reason} '
                             '(python -m gluon_resnest.native shows the details)',
                             symbol_file) from None
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
    verify_export(prefix, epoch, meta)
    symbol, saved = read_export(symbol_file, params_file)
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
    if len(inputs) == 1 and not meta['quantized']:
        # The shapes of an edited symbol and its parameters must agree for the meta file's
        # input (MXNet checks only at the first forward pass).
        arguments = set(symbol.list_arguments())
        shapes = {k.split(':', 1)[-1]: v.shape for k, v in saved.items()
                  if k.split(':', 1)[-1] in arguments}
        size, channels = meta['input_size'], meta['in_channels']
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # MXNet prints every shape there
                symbol.infer_shape(**{inputs[0]: (1, channels, size, size)}, **shapes)
        except mx.base.MXNetError as err:
            raise InputError(f'the symbol does not fit its parameters ({params_file}) and '
                             f'{size}x{size} input: {mxnet_reason(err)}', symbol_file) from None
    threads.release_openmp_team()
    return net, meta


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
    from ..model_zoo import get_model

    ctx = ctx or mx.cpu()
    if params is not None:
        if not os.path.isfile(params):
            raise FileNotFoundError(f'no parameter file at {params!r}')
        _verify_checkpoint_file(params)
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
    except (TypeError, mx.base.MXNetError) as err:
        reason = mxnet_reason(err) if isinstance(err, mx.base.MXNetError) else err
        raise InputError(f'{model} cannot be built with {kwargs}: {reason}') from None
    if params is None:
        net.initialize(ctx=ctx)
    else:
        net.load_parameters(params, ctx=ctx)
    return net


def _verify_checkpoint_file(params: str) -> None:
    """Compare a checkpoint's parameter file with the SHA-256 its ``meta.json`` records."""
    folder = os.path.dirname(os.path.abspath(params))
    meta_file = os.path.join(folder, 'meta.json')
    try:
        with open(meta_file, encoding='utf-8') as handle:
            table = json.load(handle).get(CHECKSUM_KEY)
    except (OSError, ValueError, AttributeError):
        return  # not a checkpoint folder
    if isinstance(table, dict) and os.path.basename(params) in table:
        verify_checksums(folder, table, [os.path.basename(params)], meta=meta_file)


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
    if not isinstance(spec, dict):
        raise InputError('not a model description (model, classes, model_kwargs)', path)
    checks = (('model', lambda v: isinstance(v, str) and v, 'a registered model name'),
              ('classes', lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
               'a whole number above 0'),
              ('model_kwargs', lambda v: isinstance(v, dict), 'a JSON object of arguments'))
    for key, valid, expected in checks:
        if key in spec and not valid(spec[key]):
            raise InputError(f'{key}: expected {expected}, got {spec[key]!r}', path)
    return spec


def load_network(prefix: str | None = None, model: str | None = None,
                 params: str | None = None, epoch: int = 0,
                 ctx: Any = None) -> tuple[nn.HybridBlock, dict[str, Any]]:
    """The network a tool runs, with its meta data: an export, or a model and its parameters.

    Args:
        prefix: An export's prefix (read with :func:`load_exported`).
        model: Otherwise a registered model name, built by :func:`build_network` from ``params``
            and hybridized; its meta is :data:`META_DEFAULTS` (ImageNet mean/std, normalisation
            outside the graph) with the model's ``eval_crop`` (:func:`~gluon_resnest.models.
            model_info`) as input size.
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
    return net, dict(META_DEFAULTS, model=model, input_size=model_info(model)['eval_crop'],
                     classes=getattr(net, 'classes', None))


