"""Float32 CPU inference on oneDNN 3: the network's graph with gluon_resnest's native operators.

MXNet 1.9.1 runs its convolutions on the oneDNN 2.4 it ships. :func:`fast_inference` rewrites
a ResNeSt's inference graph so that

* every convolution over a feature map becomes ``gluon_resnest_conv`` (oneDNN 3 from the
  ``onednn-cpu-gomp`` wheel), with its folded BatchNorm as the bias and the ReLU, and the
  residual sum of a bottleneck, fused into it;
* the Split-Attention's pooled input and weighted sum become ``gluon_resnest_sa_gap_nhwc`` and
  ``gluon_resnest_sa_sum_nhwc``;
* the attention between them (on the pooled 1 x 1 map: ``fc1`` with its folded BatchNorm, the
  ReLU, ``fc2`` and the softmax over the splits) becomes one ``gluon_resnest_sa_attention``;

and all of these read and write N x H x W x C in place, so the feature maps are not reordered
between operators. The pooling layers and the classifier stay MXNet's.

With ``winograd=True`` (the default) the 3 x 3 convolutions of stride 1 and padding 1 run as
Winograd F(4 x 4, 3 x 3), which needs a quarter of the multiplications (on CPUs with AVX-512,
for channels per group divisible by 16; the others run direct). It rounds differently from a
direct convolution; ``docs/deployment.md`` gives the measured differences.

With ``dtype='bfloat16'`` the feature maps between the convolutions are bfloat16 (oneDNN 3's
bf16 convolutions; see :mod:`.fast_inference_bf16`); input and output stay float32.

The native operators must be loaded in the process that runs the graph (this module loads
them; see :mod:`gluon_resnest.native`).
"""
from __future__ import annotations

import logging
import warnings
from typing import Any

import mxnet as mx
import numpy as np
from mxnet.gluon import nn

from .. import native, threads
from ..constants import DEFAULT_CROP
from ..errors import MIN_IMAGE_SIZE
from ..layers import unfused_norm_relu
from .fast_inference_bf16 import to_bfloat16
from .graph import Graph
from .inference import fold_batchnorm, optimize_for_inference

__all__ = ['fast_inference', 'fast_inference_graph']

logger = logging.getLogger(__name__)

_DTYPES = ('float32', 'bfloat16')
_CONV_KEYS = ('kernel', 'stride', 'pad', 'dilate', 'num_filter', 'num_group')


def _native_blocks(net: nn.Block) -> list[Any]:
    found = []

    def visit(block: nn.Block) -> None:
        if hasattr(block, 'set_native') and hasattr(block, 'pool_in_conv2'):
            found.append(block)
        for child in block._children.values():  # pylint: disable=protected-access
            visit(child)
    visit(net)
    return found


def _symbol_with_native_split_attention(net: nn.HybridBlock) -> mx.sym.Symbol:
    """``net``'s symbol with the Split-Attention on the native operators."""
    blocks = _native_blocks(net)
    before = [getattr(b.conv2, 'native', False) for b in blocks]
    try:
        for block in blocks:
            block.set_native(True)
        with unfused_norm_relu(net):
            out = net(mx.sym.var('data'))
    finally:
        for block, was_native in zip(blocks, before):
            block.set_native(was_native)
    return out[0] if isinstance(out, (list, tuple)) else out


def _spatial_inputs(symbol: mx.sym.Symbol, data_shape: tuple[int, ...]) -> dict[str, int]:
    """Convolution name -> H * W of its input, for the given input shape."""
    internals = symbol.get_internals()
    shapes = {}
    names = internals.list_outputs()
    _, out_shapes, _ = internals.infer_shape_partial(data=data_shape)
    for name, shape in zip(names, out_shapes):
        shapes[name] = shape
    graph = Graph(symbol)
    result = {}
    for node in graph.nodes:
        if node['op'] != 'Convolution':
            continue
        src = graph.nodes[node['inputs'][0][0]]
        key = src['name'] if src['op'] == 'null' else f"{src['name']}_output"
        if src['op'] != 'null' and key not in shapes:
            key = f"{src['name']}_output{node['inputs'][0][1]}"
        shape = shapes.get(key)
        result[node['name']] = shape[2] * shape[3] if shape and len(shape) == 4 else 0
    return result


def fast_inference_graph(symbol: mx.sym.Symbol, arg_params: dict[str, mx.nd.NDArray],
                         aux_params: dict[str, mx.nd.NDArray],
                         data_shape: tuple[int, int, int, int] = (1, 3, DEFAULT_CROP, DEFAULT_CROP),
                         winograd: bool = True, dtype: str = 'float32',
                         fuse_attention: bool = True
                         ) -> tuple[mx.sym.Symbol, dict[str, mx.nd.NDArray],
                                    dict[str, mx.nd.NDArray], dict[str, int]]:
    """Rewrite an inference symbol (Split-Attention on the native operators, BatchNorms not yet
    folded) onto the oneDNN 3 operators (see the module text).

    ``fuse_attention=False`` keeps each attention on MXNet's operators (``fc1``, ReLU, ``fc2``,
    softmax) instead of ``gluon_resnest_sa_attention``.

    Returns:
        ``(symbol, arg_params, aux_params, counts)``; ``counts`` says how many convolutions,
        fused ReLUs, fused residual sums, Split-Attention operators and fused attentions were
        rewritten, and how many convolutions may run as Winograd; with ``dtype='bfloat16'``
        (the graph of
        :func:`~gluon_resnest.deploy.fast_inference_bf16.to_bfloat16`) also ``'bfloat16'``,
        that rewrite's counts.
    """
    _check_dtype(dtype)
    symbol, args, aux = fold_batchnorm(symbol, arg_params, aux_params)
    spatial = _spatial_inputs(symbol, data_shape)
    graph = Graph(symbol)
    nodes = graph.nodes
    counts = {'conv': 0, 'relu': 0, 'sum': 0, 'split_attention': 0, 'winograd': 0,
              'attention': 0}

    def sole(i: int) -> int | None:
        users = graph.consumers.get(i, [])
        return users[0] if len(users) == 1 and users[0] >= 0 else None

    def is_relu(i: int | None) -> bool:
        return i is not None and nodes[i]['op'] == 'Activation' and \
            graph.attrs(i).get('act_type') == 'relu'

    convs = {i for i, n in enumerate(nodes)
             if n['op'] == 'Convolution' and spatial.get(n['name'], 0) > 1
             and len(n['inputs']) >= 2 and graph.attrs(i).get('layout', 'NCHW') == 'NCHW'
             and len(_tuple(graph.attrs(i).get('kernel', '()'))) == 2}
    relu_of: dict[int, int] = {}   # conv -> the Activation folded into it
    sum_of: dict[int, tuple[int, int]] = {}   # conv -> (elemwise_add, other operand's index)
    absorbed: dict[int, int] = {}  # dropped node -> conv whose output replaces it
    for i in sorted(convs):
        user = sole(i)
        if is_relu(user):
            relu_of[i] = user
            absorbed[user] = i
        elif user is not None and nodes[user]['op'] in ('elemwise_add', '_Plus') \
                and user not in absorbed:
            operands = [e[0] for e in nodes[user]['inputs']]
            if operands.count(i) == 1:
                sum_of[i] = (user, 1 - operands.index(i))
                absorbed[user] = i
                after = sole(user)
                if is_relu(after):
                    relu_of[i] = after
                    absorbed[after] = i

    def emit(i: int) -> None:
        node = nodes[i]
        attrs = graph.attrs(i)
        inputs = [graph.remap(e) for e in node['inputs']]
        if len(inputs) < 3:  # no bias: a zero one
            name = f"{node['name']}_bias"
            args[name] = mx.nd.zeros((int(attrs['num_filter']),))
            inputs.append(graph.variable(name))
        new_attrs = {k: attrs[k] for k in _CONV_KEYS if k in attrs}
        new_attrs['relu'] = '1' if i in relu_of else '0'
        if winograd and _winograd_shape(new_attrs):
            new_attrs['winograd'] = '1'
            counts['winograd'] += 1
        if i in sum_of:
            add, k = sum_of[i]
            inputs.append(graph.remap(nodes[add]['inputs'][k]))
            new_attrs['sum'] = '1'
            counts['sum'] += 1
        counts['conv'] += 1
        counts['relu'] += i in relu_of
        graph.index[i] = graph.add({'op': 'gluon_resnest_conv', 'name': node['name'],
                                    'attrs': new_attrs, 'inputs': inputs})

    chains = _attention_chains(graph) if fuse_attention else {}
    inner = {k for chain in chains.values() for k in chain['inner']}

    def emit_attention(chain: dict[str, Any]) -> int:
        inputs = [graph.remap([chain['gap'], 0, 0])]
        for fc, rows in ((chain['fc1'], chain['hidden']), (chain['fc2'], chain['out'])):
            fc_inputs = [graph.remap(e) for e in nodes[fc]['inputs'][1:]]
            if len(fc_inputs) < 2:  # no bias: a zero one
                name = f"{nodes[fc]['name']}_bias"
                args[name] = mx.nd.zeros((rows,))
                fc_inputs.append(graph.variable(name))
            inputs += fc_inputs
        counts['attention'] += 1
        name = nodes[chain['gap']]['name'].replace('_sa_gap', '_sa_attention')
        return graph.add({'op': 'gluon_resnest_sa_attention', 'name': name,
                          'attrs': {'radix': str(chain['radix']),
                                    'cardinality': str(chain['cardinality']),
                                    'hidden': str(chain['hidden'])},
                          'inputs': inputs})

    # A convolution with a fused sum is placed where the sum was: its residual may come later.
    at_add = {add: conv for conv, (add, _) in sum_of.items()}
    for i, node in enumerate(nodes):
        if i in at_add:
            emit(at_add[i])
        if i in inner:
            continue
        if i in chains:
            graph.index[i] = emit_attention(chains[i])
            continue
        if i in absorbed:
            graph.drop(i, [[graph.index[absorbed[i]], 0, 0]])
            continue
        if i in convs:
            if i not in sum_of:
                emit(i)
            continue
        if node['op'] in ('gluon_resnest_sa_gap', 'gluon_resnest_sa_sum'):
            counts['split_attention'] += 1
            graph.index[i] = graph.add({'op': node['op'] + '_nhwc', 'name': node['name'],
                                        'attrs': dict(graph.attrs(i)),
                                        'inputs': [graph.remap(e) for e in node['inputs']]})
            continue
        graph.keep(i)
    new = graph.to_symbol()
    if dtype == 'bfloat16':
        new, counts['bfloat16'] = to_bfloat16(new, winograd=winograd)
    used = set(new.list_arguments()) | set(new.list_auxiliary_states())
    return (new, {k: v for k, v in args.items() if k in used},
            {k: v for k, v in aux.items() if k in used}, counts)


def _attention_chains(graph: Graph) -> dict[int, dict[str, Any]]:
    """The Split-Attention attentions of a folded graph that ``gluon_resnest_sa_attention``
    computes: the last node of each (its output, radix-major) -> the chain.

    A chain is ``gluon_resnest_sa_gap`` -> 1 x 1 ``Convolution`` (fc1, its BatchNorm folded)
    -> ReLU -> 1 x 1 ``Convolution`` (fc2, the same groups) -> the softmax over the splits as
    :class:`~gluon_resnest.layers.SplitAttentionConv` writes it (``Reshape``, ``softmax``, for
    several groups ``swapaxes``, ``Reshape``), each node read only by the next.
    """
    nodes = graph.nodes

    def sole(i: int, op: str) -> int | None:
        users = graph.consumers.get(i, [])
        if len(users) != 1 or users[0] < 0 or nodes[users[0]]['op'] != op:
            return None
        return users[0] if nodes[users[0]]['inputs'][0][0] == i else None

    def pointwise(i: int | None, groups: int) -> bool:
        if i is None:
            return False
        attrs = graph.attrs(i)
        return _tuple(attrs.get('kernel', '()')) in ((1, 1), (1,)) and \
            _tuple(attrs.get('stride', '()')) in ((), (1, 1), (1,)) and \
            _tuple(attrs.get('pad', '()')) in ((), (0, 0), (0,)) and \
            _tuple(attrs.get('dilate', '()')) in ((), (1, 1), (1,)) and \
            attrs.get('layout', 'NCHW') == 'NCHW' and \
            int(attrs.get('num_group', '1')) == groups and len(nodes[i]['inputs']) in (2, 3)

    def reshape(i: int | None, shape: tuple[int, ...]) -> bool:
        return i is not None and _tuple(graph.attrs(i).get('shape', '()')) == shape and \
            graph.attrs(i).get('reverse', 'False') in ('False', 'false', '0')

    def softmax(i: int | None, axis: int) -> bool:
        attrs = graph.attrs(i) if i is not None else {}
        return i is not None and attrs.get('axis') == str(axis) and \
            attrs.get('temperature', 'None') in ('None', '1', '1.0') and \
            attrs.get('use_length', 'False') in ('False', 'false', '0') and \
            attrs.get('dtype', 'None') == 'None' and len(nodes[i]['inputs']) == 1

    chains = {}
    for gap, node in enumerate(nodes):
        if node['op'] != 'gluon_resnest_sa_gap':
            continue
        radix = int(graph.attrs(gap).get('radix', '0'))
        fc1 = sole(gap, 'Convolution')
        groups = int(graph.attrs(fc1).get('num_group', '1')) if fc1 is not None else 1
        relu = sole(fc1, 'Activation') if pointwise(fc1, groups) else None
        if radix < 2 or relu is None or graph.attrs(relu).get('act_type') != 'relu':
            continue
        fc2 = sole(relu, 'Convolution')
        first = sole(fc2, 'Reshape') if pointwise(fc2, groups) else None
        hidden = int(graph.attrs(fc1)['num_filter'])
        out = int(graph.attrs(fc2)['num_filter']) if fc2 is not None else 0
        if groups == 1 and reshape(first, (0, radix, -1)):
            soft = sole(first, 'softmax')
            inner = [fc1, relu, fc2, first, soft]
            last = sole(soft, 'Reshape') if softmax(soft, 1) else None
        elif groups > 1 and reshape(first, (0, groups, radix, -1)):
            soft = sole(first, 'softmax')
            swap = sole(soft, 'SwapAxis') if softmax(soft, 2) else None
            inner = [fc1, relu, fc2, first, soft, swap]
            ok = swap is not None and {graph.attrs(swap).get('dim1'),
                                       graph.attrs(swap).get('dim2')} == {'1', '2'}
            last = sole(swap, 'Reshape') if ok else None
        else:
            continue
        if not reshape(last, (0, -1, 1, 1)) or out % radix or hidden % groups:
            continue
        chains[last] = {'gap': gap, 'fc1': fc1, 'fc2': fc2, 'inner': inner, 'radix': radix,
                        'cardinality': groups, 'hidden': hidden, 'out': out}
    return chains


def _check_dtype(dtype: str) -> None:
    if dtype not in _DTYPES:
        raise ValueError(f'dtype: one of {", ".join(_DTYPES)}, got {dtype!r}')


def _tuple(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.strip('()[] ').replace(' ', '').split(',') if t)


def _winograd_shape(attrs: dict[str, str]) -> bool:
    """A 3 x 3 convolution of stride 1, padding 1 and no dilation."""
    def pair(key: str, default: tuple[int, int]) -> tuple[int, ...]:
        value = _tuple(attrs.get(key, '()')) or default
        return value * 2 if len(value) == 1 else value
    return pair('kernel', (0, 0)) == (3, 3) and pair('stride', (1, 1)) == (1, 1) and \
        pair('pad', (0, 0)) == (1, 1) and pair('dilate', (1, 1)) == (1, 1)


def _mxnet_inference(net: nn.HybridBlock, data: mx.nd.NDArray) -> mx.gluon.SymbolBlock:
    """``net``'s graph on MXNet's operators as a ``SymbolBlock`` sharing its parameters,
    planned for ``data`` by ``optimize_for_inference`` (``net`` itself is not changed)."""
    with unfused_norm_relu(net):
        out = net(mx.sym.var('data'))
    symbol = out[0] if isinstance(out, (list, tuple)) else out
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='Cannot decide type')
        block = mx.gluon.SymbolBlock(symbol, [mx.sym.var('data')], params=net.collect_params())
    optimize_for_inference(block, data=data)
    block(data).wait_to_read()
    return block


def fast_inference(net: nn.HybridBlock, data: mx.nd.NDArray, winograd: bool = True,
                   strict: bool = False, dtype: str = 'float32') -> mx.gluon.SymbolBlock:
    """``net`` (an initialised ResNeSt) as a ``SymbolBlock`` that runs float32 inference on the
    oneDNN 3 operators, statically planned for ``data``'s shape; ``net`` is not changed.
    ``winograd=False`` runs every convolution direct (see the module text).

    Where the operators are unavailable (not built, refused, or rejected by the self-check of
    :mod:`gluon_resnest.native`), one warning says why and the result is ``net``'s graph on
    MXNet's operators, planned by :func:`~gluon_resnest.deploy.optimize_for_inference`
    (the same outputs, slower); ``strict=True`` raises instead.

    ``dtype='bfloat16'`` computes the convolutions and feature maps in bfloat16 (see the module
    text; float32 input and output). It needs a CPU with AVX512_BF16 or AMX and the bfloat16
    operators' self-check: where either is missing, one warning says why and the float32 graph
    is used instead (``strict=True`` raises).

    Before it returns, the calling thread's OpenMP team (if any) is released, which keeps the
    engine's team spinning between operators (:func:`gluon_resnest.threads.release_openmp_team`).

    Raises:
        ValueError: ``data`` is not a float32 N x C x H x W batch on the CPU, or ``dtype`` is
            neither ``'float32'`` nor ``'bfloat16'``.
        gluon_resnest.native.NativeBuildError: with ``strict``, the operators are unavailable
            here (the message says why; ``make install`` installs oneDNN 3 and builds them).
    """
    if not isinstance(data, mx.nd.NDArray):
        raise ValueError(f'data: fast_inference needs an MXNet NDArray sample batch, got '
                         f'{type(data).__name__} (convert it with mx.nd.array)')
    if not isinstance(net, nn.HybridBlock):
        raise ValueError(f'net: fast_inference needs an initialised HybridBlock, got '
                         f'{type(net).__name__}')
    if data.context.device_type != 'cpu':
        raise ValueError(f'data: fast_inference runs on the CPU; the sample batch is on '
                         f'{data.context} (use optimize_for_inference on GPUs)')
    if data.ndim != 4 or data.dtype != np.float32:
        raise ValueError(f'data: fast_inference needs a float32 batch of shape (N, C, H, W), '
                         f'got {np.dtype(data.dtype).name} of shape {data.shape}')
    if data.shape[0] < 1:
        raise ValueError(f'data: the sample batch is empty (shape {data.shape})')
    if min(data.shape[2:]) < MIN_IMAGE_SIZE:
        raise ValueError(f'data: images of {data.shape[2]}x{data.shape[3]} pixels are too small '
                         f'for the network\'s five stride-2 stages (at least {MIN_IMAGE_SIZE})')
    _check_dtype(dtype)
    threads.report()
    reason = native.fast_inference_unavailable_reason()
    if dtype == 'bfloat16' and reason is None:
        why = native.bf16.unavailable_reason()
        if why is not None:
            if strict:
                raise native.NativeBuildError(f'bfloat16 inference on oneDNN 3 is unavailable: '
                                              f'{why}')
            logger.warning('fast_inference: bfloat16 inference on oneDNN 3 is unavailable, '
                           'running float32 instead: %s', why)
            dtype = 'float32'
    if reason is not None:
        if strict:
            raise native.NativeBuildError(f'float32 inference on oneDNN 3 is unavailable: '
                                          f'{reason}')
        logger.warning('fast_inference: float32 inference on oneDNN 3 is unavailable, using '
                       "MXNet's operators (optimize_for_inference) instead: %s", reason)
        return _mxnet_inference(net, data)
    symbol = _symbol_with_native_split_attention(net)
    params = {name: p.data() for name, p in net.collect_params().items()}
    aux_names = set(symbol.list_auxiliary_states())
    args = {k: v for k, v in params.items() if k not in aux_names}
    aux = {k: v for k, v in params.items() if k in aux_names}
    symbol, args, aux, counts = fast_inference_graph(symbol, args, aux, tuple(data.shape),
                                                     winograd=winograd, dtype=dtype)
    logger.debug('fast_inference: %s', counts)
    with warnings.catch_warnings():
        # SymbolBlock warns that the input's type is unknown; it is float32.
        warnings.filterwarnings('ignore', message='Cannot decide type')
        block = mx.gluon.SymbolBlock(symbol, [mx.sym.var('data')])
    block_params = block.collect_params()
    for name, value in list(args.items()) + list(aux.items()):
        if name in block_params:
            block_params[name]._load_init(value, mx.cpu())  # pylint: disable=protected-access
    block.hybridize(static_alloc=True, static_shape=True)
    block(data).wait_to_read()
    threads.release_openmp_team()
    return block
