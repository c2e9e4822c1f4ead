"""INT8 post-training quantization for CPU inference (oneDNN), calibrated on a RecordIO file.

The work is MXNet's :func:`mxnet.contrib.quantization.quantize_net`: the graph is fused with
the oneDNN quantization backend (Convolution + BatchNorm + ReLU + residual add become one INT8
convolution), activations are calibrated on real images (``naive``: min/max; ``entropy``:
KL-divergence thresholds), and the result is a ``SymbolBlock`` that ``export`` writes as an
ordinary ``PREFIX-symbol.json``/``PREFIX-0000.params`` pair, loadable with
``mx.gluon.SymbolBlock.imports``.
"""
from __future__ import annotations

import json
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

__all__ = ['CALIB_MODES', 'calibration_batches', 'grouped_convolutions', 'quantize_export',
           'quantize_network', 'split_grouped_convolutions']

logger = logging.getLogger(__name__)

CALIB_MODES = ('naive', 'entropy')


def quantize_network(net: nn.HybridBlock, calib_data: Sequence[mx.nd.NDArray],
                     calib_mode: str = 'naive', quantized_dtype: str = 'auto',
                     exclude_layers: Sequence[str] | None = None,
                     exclude_layers_match: Sequence[str] | None = None,
                     quantize_grouped: bool = False,
                     split_grouped: bool = True) -> mx.gluon.SymbolBlock:
    """Quantize an initialised FP32 network to INT8 (oneDNN) with calibration.

    Args:
        net: Initialised HybridBlock (a ResNeSt or a loaded export).
        calib_data: Batches of input (same shape each) used for calibration.
        calib_mode: ``naive`` (min/max of the activations) or ``entropy`` (KL thresholds).
        quantized_dtype: ``auto`` (uint8 after ReLU, int8 elsewhere), ``int8`` or ``uint8``.
        exclude_layers: Symbol names kept in FP32.
        exclude_layers_match: Substrings; symbols whose name contains one stay in FP32.
        quantize_grouped: Without ``split_grouped``, also quantize the grouped convolutions
            as they are (inaccurate in MXNet 1.9.1); by default they stay in FP32.
        split_grouped: Rewrite each grouped convolution as ungrouped ones on channel slices
            (:func:`split_grouped_convolutions`, exact in FP32) so that all are quantized.

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
    net = fold_network(net, batches[0], split_grouped=split_grouped)
    symbol = net(mx.sym.var('data'))
    exclude = list(exclude_layers or [])
    if not quantize_grouped and not split_grouped:
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
                           num_calib_examples=num, ctx=mx.cpu(), logger=None)
    return qnet


def grouped_convolutions(symbol: mx.sym.Symbol) -> list[str]:
    """Names of the Convolution nodes of ``symbol`` with ``num_group > 1``."""
    return [node['name'] for node in json.loads(symbol.tojson())['nodes']
            if node['op'] == 'Convolution' and int(node.get('attrs', {}).get('num_group', 1)) > 1]


def split_grouped_convolutions(symbol: mx.sym.Symbol, arg_params: dict[str, mx.nd.NDArray],
                               aux_params: dict[str, mx.nd.NDArray], move_relu: bool = True
                               ) -> tuple[mx.sym.Symbol, dict[str, mx.nd.NDArray],
                                          dict[str, mx.nd.NDArray]]:
    """Rewrite every grouped Convolution (``num_group = G > 1``) as G ungrouped ones.

    ``conv(x, groups=G)`` becomes ``Concat(conv_0(x_0), ..., conv_{G-1}(x_{G-1}))`` with
    ``x_g`` the g-th of G equal channel slices of ``x`` (``SliceChannel``) and ``conv_g`` an
    ungrouped convolution with the g-th block of output channels of the weight (and bias).
    When the convolution's only consumer is a ReLU ``Activation``, the ReLU is applied to each
    branch before the ``Concat`` (elementwise, so exact), which lets oneDNN fuse it into each
    convolution. The result equals the grouped network's output to float32 rounding.

    MXNet 1.9.1's INT8 grouped convolution is inaccurate whenever the groups' channels differ
    in weight magnitude; its ungrouped convolutions are accurate, so the rewritten graph can be
    quantized whole.

    Args:
        symbol: The network's symbol.
        arg_params: Its arguments (weights); grouped weights are replaced by per-group ones
            named ``<conv>_g<k>_weight`` (and ``<conv>_g<k>_bias``).
        aux_params: Its auxiliary states (returned as a copy).
        move_relu: Apply a following ReLU per branch, before the ``Concat``.

    Returns:
        ``(symbol, arg_params, aux_params)``, new objects; the inputs are not modified.
    """
    graph = json.loads(symbol.tojson())
    nodes = graph['nodes']
    consumers: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        for entry in node['inputs']:
            consumers.setdefault(entry[0], []).append(i)
    head_ids = {entry[0] for entry in graph['heads']}
    args = dict(arg_params)
    grouped = {i for i, node in enumerate(nodes) if node['op'] == 'Convolution'
               and int(node.get('attrs', {}).get('num_group', 1)) > 1}
    absorbed: dict[int, int] = {}  # ReLU index -> grouped conv index
    if move_relu:
        for i in grouped:
            users = consumers.get(i, [])
            if len(users) == 1 and i not in head_ids:
                user = nodes[users[0]]
                if (user['op'] == 'Activation' and user.get('attrs', {}).get('act_type') == 'relu'
                        and len(user['inputs']) == 1):
                    absorbed[users[0]] = i
    dropped = {entry[0] for i in grouped for entry in nodes[i]['inputs'][1:]}
    new_nodes: list[dict[str, Any]] = []
    index: dict[int, int] = {}

    def add(node: dict[str, Any]) -> int:
        new_nodes.append(node)
        return len(new_nodes) - 1

    relu_of = {conv: act for act, conv in absorbed.items()}
    for i, node in enumerate(nodes):
        if i in absorbed:
            continue  # index[i] was set when its convolution was rewritten
        if i in dropped and node['op'] == 'null' and all(
                c in grouped for c in consumers.get(i, [])):
            continue
        if i not in grouped:
            index[i] = add(dict(node, inputs=[[index[e[0]], e[1], e[2]]
                                               for e in node['inputs']]))
            continue
        attrs = dict(node.get('attrs', {}))
        groups = int(attrs['num_group'])
        name = node['name']
        weight_name = nodes[node['inputs'][1][0]]['name']
        # Slice in numpy: an array laid out by oneDNN cannot be sliced as a view.
        weight = args.pop(weight_name).asnumpy()
        filters = int(attrs['num_filter'])
        if filters % groups or weight.shape[0] != filters:
            raise ValueError(f'{name}: num_filter={filters} does not split into {groups} groups')
        per = filters // groups
        has_bias = attrs.get('no_bias', 'False') not in ('True', '1', 'true')
        bias = args.pop(nodes[node['inputs'][2][0]]['name']).asnumpy() if has_bias else None
        data = node['inputs'][0]
        split = add({'op': 'SliceChannel', 'name': f'{name}_split',
                     'attrs': {'num_outputs': str(groups), 'axis': '1', 'squeeze_axis': 'False'},
                     'inputs': [[index[data[0]], data[1], data[2]]]})
        branch_attrs = dict(attrs, num_group='1', num_filter=str(per))
        outputs = []
        for g in range(groups):
            inputs = [[split, g, 0]]
            w_name = f'{name}_g{g}_weight'
            args[w_name] = mx.nd.array(weight[g * per:(g + 1) * per], dtype=weight.dtype)
            inputs.append([add({'op': 'null', 'name': w_name, 'inputs': []}), 0, 0])
            if bias is not None:
                b_name = f'{name}_g{g}_bias'
                args[b_name] = mx.nd.array(bias[g * per:(g + 1) * per], dtype=bias.dtype)
                inputs.append([add({'op': 'null', 'name': b_name, 'inputs': []}), 0, 0])
            out = add({'op': 'Convolution', 'name': f'{name}_g{g}', 'attrs': dict(branch_attrs),
                       'inputs': inputs})
            if i in relu_of:
                act = nodes[relu_of[i]]
                out = add({'op': 'Activation', 'name': f"{act['name']}_g{g}",
                           'attrs': dict(act.get('attrs', {})), 'inputs': [[out, 0, 0]]})
            outputs.append([out, 0, 0])
        concat_name = nodes[relu_of[i]]['name'] if i in relu_of else f'{name}_concat'
        concat = add({'op': 'Concat', 'name': concat_name,
                      'attrs': {'num_args': str(groups), 'dim': '1'}, 'inputs': outputs})
        index[i] = concat
        if i in relu_of:
            index[relu_of[i]] = concat
    graph = {'nodes': new_nodes,
             'arg_nodes': [i for i, n in enumerate(new_nodes) if n['op'] == 'null'],
             'heads': [[index[e[0]], e[1], e[2]] for e in graph['heads']],
             'attrs': graph.get('attrs', {})}
    return mx.sym.load_json(json.dumps(graph)), args, dict(aux_params)


def fold_network(net: nn.HybridBlock, sample: mx.nd.NDArray,
                 split_grouped: bool = False) -> mx.gluon.SymbolBlock:
    """``net`` as a ``SymbolBlock`` with its BatchNorms folded into the convolutions.

    See :func:`gluon_resnest.inference.fold_batchnorm`. With ``split_grouped`` the grouped
    convolutions are then rewritten as ungrouped ones (:func:`split_grouped_convolutions`).
    """
    net.hybridize()
    net(sample)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, 'fp32')
        net.export(prefix, epoch=0)
        symbol, args, aux = mx.model.load_checkpoint(prefix, 0)
    symbol, args, aux = fold_batchnorm(symbol, args, aux)
    if split_grouped:
        symbol, args, aux = split_grouped_convolutions(symbol, args, aux)
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
                    num_workers: int = 2, split_grouped: bool = True) -> tuple[str, str]:
    """Quantize an export (``PREFIX-symbol.json``/``-%04d.params``) to an INT8 export.

    The input size, mean/std and embedded-normalisation flag come from ``PREFIX-meta.json``
    (see :mod:`gluon_resnest.deploy`); the meta file is copied to ``OUTPUT-meta.json`` with
    ``quantized: true`` and the calibration recorded. A class-names file is copied too.
    ``split_grouped=False`` keeps the grouped convolutions (then in FP32) instead of rewriting
    them as ungrouped INT8 ones (see :func:`quantize_network`).

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
                            exclude_layers_match=exclude_layers_match,
                            split_grouped=split_grouped)
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
                               'quantized_dtype': quantized_dtype,
                               'split_grouped': split_grouped})
    write_meta(output, **fields)
    logger.info('wrote %s and %s', symbol_file, params_file)
    return symbol_file, params_file


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of rows whose argmax agrees between two logit arrays."""
    return float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))
