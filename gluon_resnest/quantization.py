"""INT8 post-training quantization for CPU inference (oneDNN), calibrated on a RecordIO file.

The work is MXNet's :func:`mxnet.contrib.quantization.quantize_net`: the graph is fused with
the oneDNN quantization backend (Convolution + BatchNorm + ReLU + residual add become one INT8
convolution), activations are calibrated on real images (``naive``: min/max; ``entropy``:
KL-divergence thresholds), and the result is a ``SymbolBlock`` that ``export`` writes as an
ordinary ``PREFIX-symbol.json``/``PREFIX-0000.params`` pair, loadable with
``mx.gluon.SymbolBlock.imports``.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any, Iterable, Sequence

import mxnet as mx
import numpy as np
from mxnet.gluon import nn

from .deploy import eval_transform, export_paths, load_exported, read_meta, write_meta
from .inference import fold_batchnorm

__all__ = ['CALIB_MODES', 'calibration_batches', 'quantize_export', 'quantize_network']

logger = logging.getLogger(__name__)

CALIB_MODES = ('naive', 'entropy')


def quantize_network(net: nn.HybridBlock, calib_data: Sequence[mx.nd.NDArray],
                     calib_mode: str = 'naive', quantized_dtype: str = 'auto',
                     exclude_layers: Sequence[str] | None = None,
                     exclude_layers_match: Sequence[str] | None = None,
                     quantize_grouped: bool = False) -> mx.gluon.SymbolBlock:
    """Quantize an initialised FP32 network to INT8 (oneDNN) with calibration.

    Args:
        net: Initialised HybridBlock (a ResNeSt or a loaded export).
        calib_data: Batches of input (same shape each) used for calibration.
        calib_mode: ``naive`` (min/max of the activations) or ``entropy`` (KL thresholds).
        quantized_dtype: ``auto`` (uint8 after ReLU, int8 elsewhere), ``int8`` or ``uint8``.
        exclude_layers: Symbol names kept in FP32.
        exclude_layers_match: Substrings; symbols whose name contains one stay in FP32.
        quantize_grouped: Also quantize grouped convolutions (inaccurate in MXNet 1.9.1).

    Returns:
        The quantized network as a ``SymbolBlock``.
    """
    from mxnet.contrib.quantization import quantize_net_v2

    if calib_mode not in CALIB_MODES:
        raise ValueError(f'calib_mode must be one of {CALIB_MODES}, got {calib_mode!r}')
    batches = list(calib_data)
    if not batches:
        raise ValueError('no calibration batches')
    shape = batches[0].shape
    batches = [b for b in batches if b.shape == shape]
    net = fold_network(net, batches[0])
    symbol = net(mx.sym.var('data'))
    exclude = list(exclude_layers or [])
    if not quantize_grouped:
        # MXNet 1.9.1's INT8 grouped convolution loses accuracy whenever the channels of the
        # groups differ in weight magnitude (as after BatchNorm folding): measured relative
        # errors of 30-40% on one Split-Attention conv. Those convolutions stay in FP32.
        exclude += grouped_convolutions(symbol)
    num = sum(b.shape[0] for b in batches)
    qnet = quantize_net_v2(net, quantized_dtype=quantized_dtype,
                           quantize_granularity='channel-wise',
                        exclude_layers=exclude,
                        exclude_layers_match=list(exclude_layers_match or []),
                        calib_data=[[b] for b in batches], calib_mode=calib_mode,
                        num_calib_examples=num,
                        ctx=mx.cpu(), logger=None)
    return qnet


def grouped_convolutions(symbol: mx.sym.Symbol) -> list[str]:
    """Names of the Convolution nodes of ``symbol`` with ``num_group > 1``."""
    import json

    return [node['name'] for node in json.loads(symbol.tojson())['nodes']
            if node['op'] == 'Convolution' and int(node.get('attrs', {}).get('num_group', 1)) > 1]


def fold_network(net: nn.HybridBlock, sample: mx.nd.NDArray) -> mx.gluon.SymbolBlock:
    """``net`` as a ``SymbolBlock`` with its BatchNorms folded into the convolutions.

    See :func:`gluon_resnest.inference.fold_batchnorm`.
    """
    net.hybridize()
    net(sample)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, 'fp32')
        net.export(prefix, epoch=0)
        symbol, args, aux = mx.model.load_checkpoint(prefix, 0)
    symbol, args, aux = fold_batchnorm(symbol, args, aux)
    inputs = [name for name in symbol.list_arguments() if name not in args]
    block = mx.gluon.SymbolBlock(symbol, [mx.sym.var(name) for name in inputs])
    params = block.collect_params()
    for name, value in list(args.items()) + list(aux.items()):
        if name in params:
            params[name]._load_init(value, mx.cpu())  # pylint: disable=protected-access
    block.hybridize()
    return block


def calibration_batches(rec_path: str, batch_size: int, num_examples: int, input_size: int,
                        mean: Sequence[float] | None, std: Sequence[float] | None,
                        num_workers: int = 2) -> list[mx.nd.NDArray]:
    """Evaluation-transformed batches (full ones only) from a RecordIO file.

    Uses :class:`gluon_resnest.data.ValLoader` (short side to ``ceil(size/0.875)``, center crop)
    when the ``.idx`` file is present, else reads the ``.rec`` sequentially.

    Args:
        rec_path: The ``.rec`` file.
        batch_size: Images per batch.
        num_examples: Images to collect at most (rounded down to whole batches, at least one).
        input_size: Square crop side.
        mean: RGB mean (0-255 scale) subtracted, or None to feed 0-255 values.
        std: RGB standard deviation divided by, or None.
        num_workers: Decoding processes of the loader.

    Returns:
        A list of ``(batch_size, 3, input_size, input_size)`` float32 arrays.
    """
    if not os.path.isfile(rec_path):
        raise FileNotFoundError(f'no RecordIO file at {rec_path!r}')
    wanted = max(1, num_examples // batch_size)
    idx_path = os.path.splitext(rec_path)[0] + '.idx'
    batches: list[mx.nd.NDArray] = []
    if os.path.isfile(idx_path):
        from .data import ValLoader

        loader = ValLoader(rec_path, batch_size, eval_crop=input_size, num_workers=num_workers,
                           mean=tuple(mean) if mean is not None else (0.0, 0.0, 0.0),
                           std=tuple(std) if std is not None else (1.0, 1.0, 1.0))
        for data, _ in loader:
            if data.shape[0] == batch_size:
                batches.append(data.copy())
            if len(batches) >= wanted:
                break
    else:
        batches = list(_read_sequential(rec_path, batch_size, wanted, input_size, mean, std))
    if not batches:
        raise ValueError(f'{rec_path!r} holds fewer than batch_size={batch_size} readable '
                         f'images; lower --batch-size')
    return batches


def _read_sequential(rec_path: str, batch_size: int, wanted: int, input_size: int,
                     mean: Sequence[float] | None, std: Sequence[float] | None
                     ) -> Iterable[mx.nd.NDArray]:
    record = mx.recordio.MXRecordIO(rec_path, 'r')
    images: list[mx.nd.NDArray] = []
    made = 0
    try:
        while made < wanted:
            item = record.read()
            if item is None:
                break
            _, raw = mx.recordio.unpack(item)
            try:
                img = mx.image.imdecode(raw, flag=1, to_rgb=True)
            except mx.base.MXNetError:
                logger.warning('skipping an undecodable record in %s', rec_path)
                continue
            images.append(eval_transform(img, input_size, mean, std if mean is not None
                                         else None))
            if len(images) == batch_size:
                yield mx.nd.concat(*images, dim=0)
                images = []
                made += 1
    finally:
        record.close()


def quantize_export(prefix: str, calib_rec: str, output: str, epoch: int = 0,
                    calib_mode: str = 'naive', num_calib_examples: int = 256,
                    batch_size: int = 32, quantized_dtype: str = 'auto',
                    exclude_layers_match: Sequence[str] | None = None,
                    num_workers: int = 2) -> tuple[str, str]:
    """Quantize an export (``PREFIX-symbol.json``/``-%04d.params``) to an INT8 export.

    The input size, mean/std and embedded-normalisation flag come from ``PREFIX-meta.json``
    (see :mod:`gluon_resnest.deploy`); the meta file is copied to ``OUTPUT-meta.json`` with
    ``quantized: true`` and the calibration recorded. A class-names file is copied too.

    Returns:
        ``(symbol_file, params_file)`` of the INT8 export.
    """
    net, meta = load_exported(prefix, epoch)
    input_names = meta.get('input_names') or ['data']
    if len(input_names) != 1:
        raise ValueError(f'{prefix!r} has inputs {input_names}; quantization supports one')
    size = int(meta.get('input_size') or 224)
    preprocess = bool(meta.get('preprocess'))
    mean = None if preprocess else meta.get('mean')
    std = None if preprocess else meta.get('std')
    batches = calibration_batches(calib_rec, batch_size, num_calib_examples, size, mean, std,
                                  num_workers=num_workers)
    logger.info('calibrating on %d images (%s)', sum(b.shape[0] for b in batches), calib_mode)
    qnet = quantize_network(net, batches, calib_mode=calib_mode,
                            quantized_dtype=quantized_dtype,
                            exclude_layers_match=exclude_layers_match)
    qnet.hybridize(static_alloc=True, static_shape=True)
    qnet(batches[0][:1]).wait_to_read()
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    qnet.export(output, epoch=0)
    symbol_file, params_file, _ = export_paths(output, 0)
    fields: dict[str, Any] = dict(read_meta(prefix) if os.path.isfile(export_paths(prefix)[2])
                                  else meta)
    fields.pop('input_names', None)
    names = fields.get('class_names')
    if names:
        source = os.path.join(os.path.dirname(os.path.abspath(prefix)), names)
        target_name = f'{os.path.basename(output)}.classes'
        if os.path.isfile(source):
            shutil.copyfile(source, os.path.join(folder, target_name))
            fields['class_names'] = target_name
    fields.update(quantized=True, epoch=0, source_prefix=os.path.abspath(prefix),
                  calibration={'rec': os.path.abspath(calib_rec), 'mode': calib_mode,
                               'examples': int(sum(b.shape[0] for b in batches)),
                               'quantized_dtype': quantized_dtype})
    write_meta(output, **fields)
    logger.info('wrote %s and %s', symbol_file, params_file)
    return symbol_file, params_file


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of rows whose argmax agrees between two logit arrays."""
    return float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))
