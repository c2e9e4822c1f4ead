"""Fast CPU inference: oneDNN graph fusion and static memory for a ResNeSt (or any HybridBlock).

:func:`optimize_for_inference` is the documented way to deploy a network on CPU::

    net = gluon_resnest.get_model('resnest50', pretrained='resnest50.params')
    net = gluon_resnest.optimize_for_inference(net, batch_size=16, input_size=224)
    logits = net(images)                      # (16, 3, 224, 224) float32, normalised

It partitions the graph with MXNet's oneDNN subgraph backend (``MKLDNN``): every
Convolution + BatchNorm (+ ReLU) (+ residual add) chain becomes one fused oneDNN convolution
whose weights carry the folded BatchNorm, and it pre-plans memory (``static_alloc`` /
``static_shape``). The outputs equal the unfused network's to float32 rounding.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import mxnet as mx
from mxnet.gluon import nn

from .. import threads
from ..constants import DEFAULT_CROP
from .graph import Graph

__all__ = ['fold_batchnorm', 'optimize_for_inference', 'subgraph_backend_available']

logger = logging.getLogger(__name__)

#: MXNet's name of its oneDNN subgraph backend (MXNet 1.x still calls oneDNN "MKLDNN").
ONEDNN_BACKEND = 'MKLDNN'


def subgraph_backend_available() -> bool:
    """True when this MXNet build has oneDNN (and so the ``MKLDNN`` subgraph backend)."""
    from mxnet.runtime import Features  # local: cheap, but keeps import side-effect free

    return Features().is_enabled('MKLDNN')


def optimize_for_inference(net: nn.HybridBlock, batch_size: int = 1, input_size: int = DEFAULT_CROP,
                           in_channels: int | None = None, ctx: Any = None,
                           backend: str | None = ONEDNN_BACKEND,
                           data: mx.nd.NDArray | None = None) -> nn.HybridBlock:
    """Fuse and statically plan ``net`` for inference on CPU; returns ``net`` (changed in place).

    The network must be initialised (``initialize()`` or loaded parameters). Training-only
    layers are inert at inference (Dropout, DropBlock), so the partitioned graph is exact.
    Other batch sizes still work after this call, at the cost of a re-plan on each change of
    shape; call it with the batch size you will serve.

    Args:
        net: An initialised HybridBlock (a ResNeSt, or a ``SymbolBlock`` loaded from an export).
        batch_size: Batch size the graph is planned for.
        input_size: Square input side.
        in_channels: Input channels; defaults to ``net.in_channels`` or 3.
        ctx: Context of the sample input; default CPU.
        backend: Subgraph backend; None (or a build without oneDNN) only hybridizes with
            static memory.
        data: A sample batch to use instead of zeros of the given shape.

    Returns:
        ``net``, hybridized (and partitioned when the backend is available).

    Raises:
        ValueError: ``net`` is not initialised.
    """
    if not isinstance(net, nn.HybridBlock):
        raise TypeError(f'optimize_for_inference needs a HybridBlock, got {type(net).__name__}')
    threads.report()
    if data is None:
        channels = in_channels or getattr(net, 'in_channels', 3)
        data = mx.nd.zeros((batch_size, channels, input_size, input_size), ctx=ctx or mx.cpu())
    if backend and data.context.device_type == 'cpu' and not subgraph_backend_available():
        logger.warning('MXNet was built without oneDNN: hybridizing without graph fusion')
        backend = None
    # Avoid a second, environment-driven partitioning pass on top of ours.
    if os.environ.get('MXNET_SUBGRAPH_BACKEND') and backend:
        logger.info('MXNET_SUBGRAPH_BACKEND=%s is set; optimize_for_inference partitions '
                    'explicitly', os.environ['MXNET_SUBGRAPH_BACKEND'])
    try:
        if backend:
            net.optimize_for(data, backend=backend, static_alloc=True, static_shape=True)
        else:
            net.hybridize(static_alloc=True, static_shape=True)
        out = net(data)  # builds the plan (and the fused oneDNN primitives) once
        for array in out if isinstance(out, (list, tuple)) else [out]:
            array.wait_to_read()
    except RuntimeError as err:
        if 'initialize' in str(err) or 'has not been initialized' in str(err):
            raise ValueError('optimize_for_inference needs an initialised network: call '
                             'net.initialize() or load parameters first') from None
        raise
    threads.release_openmp_team()
    return net


def fold_batchnorm(symbol: mx.sym.Symbol, arg_params: dict[str, mx.nd.NDArray],
                   aux_params: dict[str, mx.nd.NDArray]
                   ) -> tuple[mx.sym.Symbol, dict[str, mx.nd.NDArray],
                              dict[str, mx.nd.NDArray]]:
    """Fold every inference BatchNorm that directly follows a Convolution into its weights.

    ``BN(conv(x)) = conv'(x)`` with ``w' = w * s``, ``b' = (b - mean) * s + beta`` and
    ``s = gamma / sqrt(var + eps)`` per output channel (``gamma = 1`` under ``fix_gamma``).
    Only convolutions whose sole consumer is the BatchNorm are folded. The folded convolution
    gets a bias named ``<conv>_bias``. Exact up to float32 rounding.

    MXNet 1.9's INT8 convolution mis-handles a fused BatchNorm after a *grouped* convolution
    (as in every Split-Attention block); quantizing the folded graph avoids that path.

    Returns:
        ``(symbol, arg_params, aux_params)``, new objects; the inputs are not modified.
    """
    graph = Graph(symbol)
    nodes = graph.nodes
    args = dict(arg_params)
    aux = dict(aux_params)
    fold: dict[int, int] = {}  # BatchNorm index -> Convolution index
    for i, node in enumerate(nodes):
        if node['op'] != 'BatchNorm':
            continue
        src = node['inputs'][0][0]
        if graph.op(src) == 'Convolution' and len(graph.consumers.get(src, [])) == 1:
            fold[i] = src
    conv_of = {conv: bn for bn, conv in fold.items()}
    dropped = {entry[0] for bn in fold for entry in nodes[bn]['inputs'][1:]}
    for i, node in enumerate(nodes):
        if i in fold:
            graph.index[i] = graph.index[fold[i]]
            continue
        if i in dropped and node['op'] == 'null':
            continue
        if i not in conv_of:
            graph.keep(i)
            continue
        inputs = [graph.remap(e) for e in node['inputs']]
        bn = conv_of[i]
        attrs = graph.attrs(bn)
        eps = float(attrs.get('eps', 1e-3))
        fix_gamma = attrs.get('fix_gamma', 'True') == 'True'
        gamma, beta, mean, var = (nodes[e[0]]['name'] for e in nodes[bn]['inputs'][1:5])
        running_var = aux.pop(var)
        scale = (mx.nd.ones_like(running_var) if fix_gamma else args.pop(gamma)) / \
            mx.nd.sqrt(running_var + eps)
        if fix_gamma:
            args.pop(gamma, None)
        shift = args.pop(beta) - aux.pop(mean) * scale
        conv_attrs = dict(graph.attrs(i))
        weight_name = nodes[node['inputs'][1][0]]['name']
        args[weight_name] = args[weight_name] * scale.reshape((-1, 1, 1, 1))
        if conv_attrs.get('no_bias', 'False') in ('True', '1', 'true'):
            bias_name = f"{node['name']}_bias"
            inputs = inputs[:2] + [graph.variable(bias_name)]
            args[bias_name] = shift
            conv_attrs['no_bias'] = 'False'
        else:
            bias_name = nodes[node['inputs'][2][0]]['name']
            args[bias_name] = args[bias_name] * scale + shift
        graph.index[i] = graph.add(dict(node, inputs=inputs, attrs=conv_attrs))
    return graph.to_symbol(), args, aux
