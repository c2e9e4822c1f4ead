"""INT8 post-training quantization for CPU inference (oneDNN), calibrated on a RecordIO file.

BatchNorm is first folded into the convolutions and every grouped convolution is rewritten as
ungrouped ones (:func:`split_grouped_convolutions`; MXNet 1.9.1's INT8 grouped convolution is
inaccurate), and the attention's 1x1 convolutions of globally pooled maps as fully connected
layers (:func:`dense_pointwise_convolutions`). The rest is MXNet's
:func:`mxnet.contrib.quantization.quantize_net`: the graph is fused with the oneDNN
quantization backend (Convolution + ReLU + residual add become one INT8 convolution),
activations are calibrated on real images (``naive``: min/max; ``entropy``:
KL-divergence thresholds), and the result is a ``SymbolBlock`` that ``export`` writes as an
ordinary ``PREFIX-symbol.json``/``PREFIX-0000.params`` pair, loadable with
``mx.gluon.SymbolBlock.imports``.
"""
from __future__ import annotations

import logging
import os
import tempfile
from typing import Any, Iterable, Sequence

import mxnet as mx
import numpy as np
from mxnet.gluon import nn

from .. import native as native_ops
from .. import threads
from ..atomic import CHECKSUM_KEY, make_folder
from ..constants import DEFAULT_CROP
from ..errors import InputError, mxnet_reason
from ..layers import unfused_norm_relu
from .export import load_exported, write_export
from .graph import Graph
from .inference import fold_batchnorm
from .preprocess import eval_transform, load_class_names

__all__ = ['CALIB_MODES', 'calibration_batches', 'dense_pointwise_convolutions',
           'fuse_split_attention_int8', 'grouped_convolutions', 'pool_splits_per_branch',
           'quantize_export', 'quantize_network', 'split_grouped_convolutions',
           'sum_splits_per_branch']

logger = logging.getLogger(__name__)

CALIB_MODES = ('naive', 'entropy')


def quantize_network(net: nn.HybridBlock, calib_data: Sequence[mx.nd.NDArray],
                     calib_mode: str = 'naive', quantized_dtype: str = 'auto',
                     exclude_layers: Sequence[str] | None = None,
                     exclude_layers_match: Sequence[str] | None = None,
                     quantize_grouped: bool = False,
                     split_grouped: bool = True,
                     split_producers: bool = True,
                     sum_per_branch: bool = True,
                     native: bool | None = None,
                     dense_pointwise: bool = True) -> mx.gluon.SymbolBlock:
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
        split_producers: With ``split_grouped``, split the 1x1 convolution that feeds a grouped
            one by output channels rather than slicing its output (faster in INT8).
        sum_per_branch: With ``split_grouped``, compute the Split-Attention weighted sum on
            the split branches (:func:`sum_splits_per_branch`; exact, faster in INT8).
        native: Run each INT8 Split-Attention weighted sum as one native operator
            (:func:`fuse_split_attention_int8`, :mod:`gluon_resnest.native`; needs
            ``split_grouped`` and ``sum_per_branch``, and uint8 activations, so not with
            ``quantized_dtype='int8'``). None: when the operator library builds and loads (a
            warning says why not otherwise); True: it must; False: never (MXNet's operators
            only).
        dense_pointwise: Run the 1x1 convolutions of globally pooled maps (the
            Split-Attention attention's) as ``FullyConnected``
            (:func:`dense_pointwise_convolutions`; exact in FP32, faster in INT8).

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
    with unfused_norm_relu(net):
        net = fold_network(net, batches[0], split_grouped=split_grouped,
                           split_producers=split_producers, sum_per_branch=sum_per_branch,
                           dense_pointwise=dense_pointwise)
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
    threads.release_openmp_team()
    # The operator reads uint8 splits: ReLU outputs quantized as uint8 (``auto``/``uint8``).
    if native is False or not (split_grouped and sum_per_branch) or \
            quantized_dtype == 'int8' or not native_ops.load(required=bool(native)):
        return qnet
    fused, count = fuse_split_attention_int8(qnet(mx.sym.var('data')))
    if not count:
        return qnet
    params = qnet.collect_params()
    inputs = [name for name in fused.list_arguments() if name not in params]
    block = mx.gluon.SymbolBlock(fused, [mx.sym.var(name) for name in inputs], params=params)
    logger.debug('fused %d Split-Attention sums into gluon_resnest_sa_sum_u8', count)
    return block


def grouped_convolutions(symbol: mx.sym.Symbol) -> list[str]:
    """Names of the Convolution nodes of ``symbol`` with ``num_group > 1``."""
    return [node['name'] for node in Graph(symbol).nodes
            if node['op'] == 'Convolution' and int(node.get('attrs', {}).get('num_group', 1)) > 1]


def split_grouped_convolutions(symbol: mx.sym.Symbol, arg_params: dict[str, mx.nd.NDArray],
                               aux_params: dict[str, mx.nd.NDArray], move_relu: bool = True,
                               split_producers: bool = True
                               ) -> tuple[mx.sym.Symbol, dict[str, mx.nd.NDArray],
                                          dict[str, mx.nd.NDArray]]:
    """Rewrite every grouped Convolution (``num_group = G > 1``) as G ungrouped ones.

    ``conv(x, groups=G)`` becomes ``Concat(conv_0(x_0), ..., conv_{G-1}(x_{G-1}))`` with
    ``x_g`` the g-th of G equal channel blocks of ``x`` and ``conv_g`` an ungrouped convolution
    with the g-th block of output channels of the weight (and bias). The blocks ``x_g`` come
    from a ``SliceChannel`` of ``x``, or, with ``split_producers``, when ``x`` is the output
    of an ungrouped Convolution (optionally followed by a ReLU) used by nothing else, from G
    convolutions that compute one block of its output channels each: no slicing pass, and in
    INT8 no dequantize/quantize round trip around it. With ``move_relu``, a ReLU
    ``Activation`` that is the grouped convolution's only consumer is applied to each branch
    before the ``Concat`` (elementwise, so exact), which lets oneDNN fuse it into each
    convolution. The result equals the original network's output to float32 rounding.

    MXNet 1.9.1's INT8 grouped convolution is inaccurate whenever the groups' channels differ
    in weight magnitude; its ungrouped convolutions are accurate, so the rewritten graph can be
    quantized whole.

    Args:
        symbol: The network's symbol.
        arg_params: Its arguments (weights); each rewritten convolution's weight (and bias) is
            replaced by per-block ones named ``<conv>_g<k>_weight`` (``<conv>_g<k>_bias``).
        aux_params: Its auxiliary states (returned as a copy).
        move_relu: Apply a ReLU that follows a grouped convolution per branch.
        split_producers: Split the producing convolution instead of slicing its output.

    Returns:
        ``(symbol, arg_params, aux_params)``, new objects; the inputs are not modified.
    """
    graph = Graph(symbol)
    nodes, consumers, attrs_of = graph.nodes, graph.consumers, graph.attrs

    def sole_relu(i: int) -> int | None:
        users = consumers.get(i, [])
        if (len(users) == 1 and users[0] >= 0 and graph.op(users[0]) == 'Activation'
                and attrs_of(users[0]).get('act_type') == 'relu'):
            return users[0]
        return None

    grouped = {i: int(attrs_of(i)['num_group']) for i, node in enumerate(nodes)
               if node['op'] == 'Convolution' and int(attrs_of(i).get('num_group', 1)) > 1}
    relu_after = {i: r for i in grouped if move_relu and (r := sole_relu(i)) is not None}
    # producer convolution -> (groups, its ReLU or None); its output feeds one grouped conv.
    producers: dict[int, tuple[int, int | None]] = {}
    if split_producers:
        for i, groups in grouped.items():
            source = nodes[i]['inputs'][0][0]
            relu = None
            if graph.op(source) == 'Activation' and attrs_of(source).get('act_type') == 'relu':
                relu, source = source, nodes[source]['inputs'][0][0]
                if consumers.get(relu) != [i]:
                    continue
            elif consumers.get(source) != [i]:
                continue
            if (graph.op(source) == 'Convolution' and source not in grouped
                    and source not in producers
                    and consumers.get(source) == [relu if relu is not None else i]
                    and int(attrs_of(source)['num_filter']) % groups == 0):
                producers[source] = (groups, relu)
    rewritten = set(grouped) | set(producers)
    skipped = set(relu_after.values()) | {r for _, r in producers.values() if r is not None}
    weights = {e[0] for i in rewritten for e in nodes[i]['inputs'][1:]}
    args = dict(arg_params)
    branches: dict[int, list[list[int]]] = {}  # split conv -> its per-block outputs

    def split_conv(i: int, groups: int, data: list[list[int]], relu: int | None
                   ) -> list[list[int]]:
        """G convolutions (each on ``data[g]``), each with a ReLU copy when ``relu``."""
        node = nodes[i]
        attrs = dict(attrs_of(i))
        name = node['name']
        filters = int(attrs['num_filter'])
        # Slice in numpy: an array laid out by oneDNN cannot be sliced as a view.
        weight = args.pop(nodes[node['inputs'][1][0]]['name']).asnumpy()
        if filters % groups or weight.shape[0] != filters:
            raise ValueError(f'{name}: num_filter={filters} does not split into {groups} blocks')
        per = filters // groups
        has_bias = attrs.get('no_bias', 'False') not in ('True', '1', 'true')
        bias = args.pop(nodes[node['inputs'][2][0]]['name']).asnumpy() if has_bias else None
        outputs = []
        for g in range(groups):
            inputs = [data[g]]
            args[f'{name}_g{g}_weight'] = mx.nd.array(weight[g * per:(g + 1) * per],
                                                      dtype=weight.dtype)
            inputs.append(graph.variable(f'{name}_g{g}_weight'))
            if bias is not None:
                args[f'{name}_g{g}_bias'] = mx.nd.array(bias[g * per:(g + 1) * per],
                                                        dtype=bias.dtype)
                inputs.append(graph.variable(f'{name}_g{g}_bias'))
            out = graph.add({'op': 'Convolution', 'name': f'{name}_g{g}',
                             'attrs': dict(attrs, num_group='1', num_filter=str(per)),
                             'inputs': inputs})
            if relu is not None:
                out = graph.add({'op': 'Activation', 'name': f"{nodes[relu]['name']}_g{g}",
                                 'attrs': dict(attrs_of(relu)), 'inputs': [[out, 0, 0]]})
            outputs.append([out, 0, 0])
        return outputs

    for i, node in enumerate(nodes):
        if i in skipped or (i in weights and node['op'] == 'null'
                            and all(c in rewritten for c in consumers.get(i, []))):
            continue
        if i in producers:
            groups, relu = producers[i]
            branches[i] = split_conv(i, groups, [graph.remap(node['inputs'][0])] * groups,
                                     relu)
            continue
        if i not in grouped:
            graph.keep(i)
            continue
        groups = grouped[i]
        data = node['inputs'][0]
        source = data[0]
        if source in skipped and graph.op(source) == 'Activation':
            source = nodes[source]['inputs'][0][0]
        if source in branches and len(branches[source]) == groups:
            blocks = branches[source]  # a split producer, or a grouped conv of as many groups
        else:
            split = graph.add({'op': 'SliceChannel', 'name': f"{node['name']}_split",
                               'attrs': {'num_outputs': str(groups), 'axis': '1',
                                         'squeeze_axis': 'False'},
                               'inputs': [graph.remap(data)]})
            blocks = [[split, g, 0] for g in range(groups)]
        relu = relu_after.get(i)
        outputs = split_conv(i, groups, blocks, relu)
        branches[i] = outputs
        concat_name = nodes[relu]['name'] if relu is not None else f"{node['name']}_concat"
        graph.index[i] = graph.add({'op': 'Concat', 'name': concat_name,
                                    'attrs': {'num_args': str(groups), 'dim': '1'},
                                    'inputs': outputs})
        if relu is not None:
            graph.index[relu] = graph.index[i]
    return graph.to_symbol(), args, dict(aux_params)


def sum_splits_per_branch(symbol: mx.sym.Symbol) -> mx.sym.Symbol:
    """Rewrite the Split-Attention weighted sum of the splits on the split branches.

    After :func:`split_grouped_convolutions`, the radix splits of a Split-Attention block
    (cardinality 1) are the ``R`` inputs ``x_r`` of one ``Concat``. The model computes
    ``sum_r a_r * x_r`` as a 5-D ``broadcast_mul`` on the concatenated map followed by a
    ``batch_dot`` with ones; this returns a symbol that computes it as ``add_n`` of ``R``
    4-D ``broadcast_mul(x_r, a_r)`` (``a_r`` from a ``SliceChannel`` of the attention), which
    MXNet runs ~10% faster in the INT8 graph (the sum stays FP32: MXNet 1.9.1 has no
    broadcasting INT8 multiply). Products and sums happen in the same order: the result is
    bitwise equal. Graphs without the pattern are returned unchanged.
    """
    graph = Graph(symbol)
    nodes, op = graph.nodes, graph.op

    def attr(i: int, key: str) -> str | None:
        return graph.attrs(i).get(key)

    for i, node in enumerate(nodes):
        pattern = None
        if op(i) == 'reshape_like' and len(node['inputs']) == 2:
            dot, mul = node['inputs'][0][0], node['inputs'][1][0]
            if op(mul) == 'broadcast_mul' and op(dot) == 'batch_dot':
                x5, a5 = (e[0] for e in nodes[mul]['inputs'])
                ones = nodes[nodes[dot]['inputs'][0][0]]
                flat = nodes[dot]['inputs'][1][0]
                if (op(x5) == op(a5) == 'Reshape' and attr(x5, 'shape') == attr(a5, 'shape')
                        and op(nodes[x5]['inputs'][0][0]) == 'Concat'
                        and ones['op'] == 'Reshape'
                        and nodes[ones['inputs'][0][0]]['op'] == 'ones_like'
                        and op(flat) == 'Reshape' and nodes[flat]['inputs'][0][0] == mul):
                    concat = nodes[x5]['inputs'][0][0]
                    radix = int(attr(concat, 'num_args') or 0)
                    if attr(x5, 'shape') == f'(0, -4, {radix}, -1, -2)' and radix > 1:
                        pattern = (concat, nodes[a5]['inputs'][0], radix)
        if pattern is None:
            graph.keep(i)
            continue
        concat, atten, radix = pattern
        name = node['name']
        parts = graph.add({'op': 'SliceChannel', 'name': f'{name}_atten_split',
                           'attrs': {'num_outputs': str(radix), 'axis': '1'},
                           'inputs': [graph.remap(atten)]})
        products = []
        for r, branch in enumerate(nodes[concat]['inputs']):
            products.append([graph.add({'op': 'broadcast_mul', 'name': f'{name}_mul{r}',
                                        'inputs': [graph.remap(branch), [parts, r, 0]]}), 0, 0])
        graph.index[i] = graph.add({'op': 'add_n', 'name': f'{name}_sum',
                                    'attrs': {'num_args': str(radix)}, 'inputs': products})
    return graph.to_symbol()


def pool_splits_per_branch(symbol: mx.sym.Symbol) -> mx.sym.Symbol:
    """Pool each radix split on its own instead of pooling their concatenation.

    After :func:`split_grouped_convolutions` the Split-Attention global pooling reads the
    ``Concat`` of the ``R`` splits and slices the pooled vector back into ``R`` parts; pooling
    each split directly gives the same parts (each slice is one split's channels) without
    writing the concatenated map. A ``Concat`` nothing else reads then drops out of the graph.
    Exact; graphs without the pattern are returned unchanged.
    """
    graph = Graph(symbol)
    nodes, op = graph.nodes, graph.op
    replace: dict[int, int] = {}  # slice_axis node -> branch node it selects
    pools: dict[int, int] = {}    # slice_axis node -> the global Pooling it reads
    for i, node in enumerate(nodes):
        attrs = graph.attrs(i)
        if op(i) != 'Pooling' or attrs.get('global_pool') != 'True' or \
                attrs.get('pool_type') != 'avg':
            continue
        concat = node['inputs'][0][0]
        if op(concat) != 'Concat' or graph.attrs(concat).get('dim', '1') != '1':
            continue
        branches = nodes[concat]['inputs']
        widths = [_conv_width(graph, e[0]) for e in branches]
        if None in widths or len(set(widths)) != 1:
            continue
        width = widths[0]
        readers = sorted(set(graph.consumers.get(i, [])))
        picks = {}
        for reader in readers:
            ra = graph.attrs(reader)
            if op(reader) != 'slice_axis' or ra.get('axis') != '1':
                break
            begin, end = int(ra['begin']), int(ra['end'])
            if begin % width or end - begin != width:
                break
            picks[reader] = begin // width
        else:
            for reader, r in picks.items():
                replace[reader], pools[reader] = branches[r][0], i
    for i, node in enumerate(nodes):
        if i not in replace:
            graph.keep(i)
            continue
        pool = nodes[pools[i]]
        graph.index[i] = graph.add({'op': 'Pooling', 'name': f'{node["name"]}_pool',
                                    'attrs': dict(pool.get('attrs', {})),
                                    'inputs': [graph.remap([replace[i], 0, 0])]})
    return graph.to_symbol()


def dense_pointwise_convolutions(symbol: mx.sym.Symbol, arg_params: dict[str, mx.nd.NDArray]
                                 ) -> tuple[mx.sym.Symbol, dict[str, mx.nd.NDArray]]:
    """Rewrite each 1x1 Convolution of a globally pooled map as a ``FullyConnected``.

    The Split-Attention attention's two 1x1 convolutions read the globally pooled map
    (N x C x 1 x 1): a matrix-vector product per image, which oneDNN runs faster as an inner
    product than as a convolution (in INT8 too). A convolution is rewritten when its input is
    1 x 1 at any input size: a global ``Pooling``, or elementwise sums, channel slices and
    activations of such maps, or another rewritten convolution. The weight ``(K, C, 1, 1)``
    becomes ``(K, C)`` under the same name; an ``Activation`` that follows acts on the flat
    ``(N, K)`` output, and a ``Reshape`` to ``(N, K, 1, 1)`` is put before any other
    reader (a ``Reshape`` that gives the same from either shape reads it directly). Exact in
    float32 (the same products and sums).

    Args:
        symbol: The network's symbol.
        arg_params: Its arguments; the rewritten convolutions' weights are reshaped.

    Returns:
        ``(symbol, arg_params)``, new objects; the inputs are not modified.
    """
    graph = Graph(symbol)
    nodes, op = graph.nodes, graph.op
    pooled: set[int] = set()  # nodes whose output is N x C x 1 x 1 whatever the input size
    dense: set[int] = set()
    for i, node in enumerate(nodes):
        attrs = graph.attrs(i)
        sources = [e[0] for e in node['inputs']]
        if op(i) == 'Pooling' and attrs.get('global_pool') in ('True', '1', 'true'):
            pooled.add(i)
        elif op(i) == 'gluon_resnest_sa_gap':
            pooled.add(i)
        elif op(i) in ('elemwise_add', '_plus', '_Plus', 'add_n', 'ElementWiseSum',
                       'Activation') and sources and all(s in pooled for s in sources):
            pooled.add(i)
        elif op(i) in ('slice_axis', 'SliceChannel') and attrs.get('axis') == '1' and \
                attrs.get('squeeze_axis', 'False') in ('False', '0', 'false') and \
                sources[0] in pooled:
            pooled.add(i)
        elif (op(i) == 'Convolution' and attrs.get('kernel') == '(1, 1)'
              and int(attrs.get('num_group', 1)) == 1
              and attrs.get('stride', '(1, 1)') == '(1, 1)'
              and attrs.get('pad', '(0, 0)') == '(0, 0)'
              and attrs.get('layout', 'NCHW') == 'NCHW' and sources[0] in pooled
              and all(graph.consumers.get(s) == [i] for s in sources[1:])):
            dense.add(i)
            pooled.add(i)
    if not dense:
        return symbol, dict(arg_params)
    args = dict(arg_params)
    weights = {nodes[i]['inputs'][1][0] for i in dense}
    for i in weights:
        # A copy: an array laid out by oneDNN cannot be reshaped as a view.
        value = args[nodes[i]['name']].asnumpy()
        args[nodes[i]['name']] = mx.nd.array(value.reshape(value.shape[0], -1), dtype=value.dtype)
    flat: set[int] = set()         # old nodes whose new output is (N, K)
    unflat: dict[int, list] = {}   # old node -> Reshape of its flat output back to 4-d

    def four_d(entry: list) -> list:
        if entry[0] not in flat:
            return graph.remap(entry)
        if entry[0] not in unflat:
            unflat[entry[0]] = [graph.add({
                'op': 'Reshape', 'name': f"{nodes[entry[0]]['name']}_unflatten",
                'attrs': {'shape': '(0, -1, 1, 1)'}, 'inputs': [graph.remap(entry)]}), 0, 0]
        return list(unflat[entry[0]])

    for i, node in enumerate(nodes):
        if i in dense:
            attrs = graph.attrs(i)
            no_bias = attrs.get('no_bias', 'False')
            graph.index[i] = graph.add({
                'op': 'FullyConnected', 'name': node['name'],
                'attrs': {'num_hidden': attrs['num_filter'], 'no_bias': no_bias,
                          'flatten': 'True'},
                'inputs': [graph.remap(e) for e in node['inputs']]})
            flat.add(i)
        elif op(i) == 'Activation' and node['inputs'][0][0] in flat:  # elementwise
            graph.keep(i)
            flat.add(i)
        elif i in weights:  # a variable may carry its shape: the new one
            attrs = dict(graph.attrs(i))
            if '__shape__' in attrs:
                attrs['__shape__'] = str(tuple(args[node['name']].shape))
            graph.index[i] = graph.add(dict(node, attrs=attrs))
        elif op(i) == 'null':
            graph.keep(i)
        elif op(i) == 'Reshape' and _flat_safe_shape(graph.attrs(i).get('shape', '')):
            graph.keep(i)  # the same result from (N, K) as from (N, K, 1, 1)
        else:
            graph.index[i] = graph.add(dict(node, inputs=[four_d(e) for e in node['inputs']]))
    for entry in graph.heads:
        if entry[0] in flat:  # an output keeps its 4-d shape
            graph.drop(entry[0], [four_d(entry)])
    return graph.to_symbol(), args


def _flat_safe_shape(shape: str) -> bool:
    """True when ``Reshape(shape=shape)`` gives the same from ``(N, K)`` as from
    ``(N, K, 1, 1)``: the batch copied (0) or given, then sizes and at most one -1."""
    try:
        dims = [int(v) for v in shape.strip('()[] ').split(',') if v.strip()]
    except ValueError:
        return False
    return (len(dims) >= 2 and dims[0] >= 0 and all(d > 0 or d == -1 for d in dims[1:])
            and dims[1:].count(-1) <= 1)


def _conv_width(graph: Graph, i: int) -> int | None:
    """Output channels of node ``i`` when it is a Convolution (or a ReLU of one), else None."""
    if graph.op(i) == 'Activation' and graph.attrs(i).get('act_type') == 'relu':
        i = graph.nodes[i]['inputs'][0][0]
    if graph.op(i) != 'Convolution':
        return None
    return int(graph.attrs(i)['num_filter'])


def fuse_split_attention_int8(symbol: mx.sym.Symbol) -> tuple[mx.sym.Symbol, int]:
    """Compute each INT8 Split-Attention weighted sum with one native operator.

    In a quantized graph from :func:`quantize_network`, ``sum_r a_r * x_r`` runs as R
    ``dequantize`` (uint8 to float32), R ``broadcast_mul``, an ``add_n`` and a ``quantize_v2``
    back to uint8. This pass replaces that chain, and the 3x3 average pooling of an avd block
    that may follow it, by ``gluon_resnest_sa_sum_u8`` (:mod:`gluon_resnest.native`, which
    must be loaded), reading the uint8 splits and writing the uint8 result in the calibrated
    range. Results equal the unfused graph's to one quantization step.

    Returns:
        ``(symbol, number of fused blocks)``.
    """
    graph = Graph(symbol)
    nodes, op = graph.nodes, graph.op
    plan: dict[int, tuple[list, list, str, int | None]] = {}
    for i, node in enumerate(nodes):
        attrs = graph.attrs(i)
        if op(i) != '_contrib_quantize_v2' or op(node['inputs'][0][0]) != 'add_n':
            continue
        if float(attrs.get('min_calib_range', '-1')) < 0 or 'max_calib_range' not in attrs:
            continue
        products = nodes[node['inputs'][0][0]]['inputs']
        splits, atten = [], None
        for r, (mul, _, _) in enumerate(products):
            if op(mul) != 'broadcast_mul':
                break
            (deq, _, _), (part, index, _) = nodes[mul]['inputs']
            source = nodes[deq]['inputs'][0][0] if op(deq) == '_contrib_dequantize' else None
            if source is None or op(part) != 'SliceChannel' or index != r or \
                    int(graph.attrs(part).get('num_outputs', 0)) != len(products) or \
                    float(graph.attrs(source).get('min_calib_range', '-1')) < 0:
                break
            if atten not in (None, nodes[part]['inputs'][0]):
                break
            atten = nodes[part]['inputs'][0]
            splits.append(nodes[deq]['inputs'])
        else:
            readers = sorted(set(graph.consumers.get(i, [])))
            pool = None
            if len(readers) == 1 and op(readers[0]) == '_contrib_quantized_pooling':
                pa = graph.attrs(readers[0])
                if (pa.get('pool_type'), pa.get('kernel'), pa.get('stride'), pa.get('pad'),
                        pa.get('global_pool', 'False'), pa.get('count_include_pad', 'True'),
                        pa.get('pooling_convention', 'valid')) == \
                        ('avg', '(3, 3)', '(2, 2)', '(1, 1)', 'False', 'True', 'valid'):
                    pool = readers[0]
            plan[i] = (splits, atten, attrs['max_calib_range'], pool)
    pooled: dict[int, int] = {}
    for i, node in enumerate(nodes):
        if i in pooled:
            graph.index[i] = pooled[i]
            continue
        if i not in plan:
            graph.keep(i)
            continue
        splits, atten, out_max, pool = plan[i]
        # The operator's input order: attention, (min, max) per split, splits.
        inputs = [graph.remap(atten)]
        for split in splits:
            inputs += [graph.remap(split[1]), graph.remap(split[2])]
        inputs += [graph.remap(split[0]) for split in splits]
        graph.index[i] = graph.add({
            'op': 'gluon_resnest_sa_sum_u8', 'name': f'{node["name"]}_sa_sum',
            'attrs': {'radix': str(len(splits)), 'max_calib_range': out_max,
                      'pool': '1' if pool is not None else '0'},
            'inputs': inputs})
        if pool is not None:
            pooled[pool] = graph.index[i]
    return graph.to_symbol(), len(plan)


def fold_network(net: nn.HybridBlock, sample: mx.nd.NDArray, split_grouped: bool = False,
                 split_producers: bool = True, sum_per_branch: bool = True,
                 dense_pointwise: bool = False) -> mx.gluon.SymbolBlock:
    """``net`` as a ``SymbolBlock`` with its BatchNorms folded into the convolutions.

    See :func:`gluon_resnest.deploy.fold_batchnorm`. With ``split_grouped`` the grouped
    convolutions are then rewritten as ungrouped ones (:func:`split_grouped_convolutions`),
    and with ``sum_per_branch`` the Split-Attention sum too (:func:`sum_splits_per_branch`).
    With ``dense_pointwise`` the 1x1 convolutions of globally pooled maps become
    ``FullyConnected`` (:func:`dense_pointwise_convolutions`).
    """
    net.hybridize()
    net(sample)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, 'fp32')
        net.export(prefix, epoch=0)
        symbol, args, aux = mx.model.load_checkpoint(prefix, 0)
    symbol, args, aux = fold_batchnorm(symbol, args, aux)
    if split_grouped:
        symbol, args, aux = split_grouped_convolutions(symbol, args, aux,
                                                       split_producers=split_producers)
        if sum_per_branch:
            symbol = pool_splits_per_branch(sum_splits_per_branch(symbol))
    if dense_pointwise:
        symbol, args = dense_pointwise_convolutions(symbol, args)
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
        from ..data import ValLoader

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
    from ..data.transforms import ImageDecodeError, decode_image

    record = mx.recordio.MXRecordIO(rec_path, 'r')
    images: list[mx.nd.NDArray] = []
    made = 0
    try:
        while made < wanted:
            try:
                item = record.read()
            except mx.base.MXNetError as err:
                raise InputError(f'not a readable RecordIO file ({mxnet_reason(err)})',
                                 rec_path) from None
            if item is None:
                break
            _, raw = mx.recordio.unpack(item)
            try:
                img = decode_image(raw)
            except ImageDecodeError:
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
                    num_workers: int = 2, split_grouped: bool = True,
                    native: bool = False) -> tuple[str, str]:
    """Quantize an export (``PREFIX-symbol.json``/``-%04d.params``) to an INT8 export.

    The input size, mean/std and embedded-normalisation flag come from ``PREFIX-meta.json``
    (see :mod:`gluon_resnest.deploy`); the meta file is copied to ``OUTPUT-meta.json`` with
    ``quantized: true`` and the calibration recorded. A class-names file is copied too.
    ``split_grouped=False`` keeps the grouped convolutions (then in FP32) instead of rewriting
    them as ungrouped INT8 ones (see :func:`quantize_network`). ``native`` as in
    :func:`quantize_network`, but off by default: the export then holds MXNet's operators
    only and plain MXNet loads it; with ``True`` it needs gluon_resnest's native libraries
    wherever it is loaded (the meta file lists the operators, ``native_operators``).

    Returns:
        ``(symbol_file, params_file)`` of the INT8 export.
    """
    if os.path.abspath(output) == os.path.abspath(prefix):
        raise InputError('--output is the FP32 export being quantized (--prefix): give the INT8 '
                         'export another prefix', output)
    make_folder(os.path.dirname(os.path.abspath(output)))  # before the calibration's work
    net, meta = load_exported(prefix, epoch)
    input_names = meta.get('input_names') or ['data']
    if len(input_names) != 1:
        raise ValueError(f'{prefix!r} has inputs {input_names}; quantization supports one')
    size = int(meta.get('input_size') or DEFAULT_CROP)
    preprocess = bool(meta.get('preprocess'))
    mean = None if preprocess else meta.get('mean')
    std = None if preprocess else meta.get('std')
    batches = calibration_batches(calib_rec, batch_size, num_calib_examples, size, mean, std,
                                  num_workers=num_workers)
    logger.info('calibrating on %d images (%s)', sum(b.shape[0] for b in batches), calib_mode)
    qnet = quantize_network(net, batches, calib_mode=calib_mode,
                            quantized_dtype=quantized_dtype,
                            exclude_layers_match=exclude_layers_match,
                            split_grouped=split_grouped, native=native)
    qnet.hybridize(static_alloc=True, static_shape=True)
    qnet(batches[0][:1]).wait_to_read()
    fields: dict[str, Any] = dict(meta)
    fields.pop('input_names', None)
    fields.pop(CHECKSUM_KEY, None)
    class_names = None
    if fields.get('class_names'):
        source = os.path.join(os.path.dirname(os.path.abspath(prefix)), fields['class_names'])
        class_names = load_class_names(source) if os.path.isfile(source) else None
    fields.update(quantized=True, epoch=0, source_prefix=os.path.abspath(prefix),
                  calibration={'rec': os.path.abspath(calib_rec), 'mode': calib_mode,
                               'examples': int(sum(b.shape[0] for b in batches)),
                               'quantized_dtype': quantized_dtype,
                               'split_grouped': split_grouped},
                  native_operators=native_ops.operators_in(qnet(mx.sym.var('data')).tojson()))
    symbol_file, params_file = write_export(qnet, output, 0, fields, class_names)
    logger.info('wrote %s and %s', symbol_file, params_file)
    return symbol_file, params_file


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of rows whose argmax agrees between two logit arrays."""
    return float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))
