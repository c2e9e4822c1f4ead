"""Parameters and multiply-accumulates of a network, counted on its symbol graph.

The paper's GFLOPs (Table 1) are multiply-accumulates of the convolutions and the FC layer:

* convolution: ``output elements * in_channels / groups * kernel_h * kernel_w``
  (the weight holds ``in_channels / groups * kernel_h * kernel_w`` values per output channel);
* fully connected: ``in_units * out_units`` per sample.

Normalisation, activations, pooling and the element-wise Split-Attention arithmetic are not
counted. Parameters are the trainable ones (the graph's arguments, without BatchNorm's running
statistics, which are auxiliary states).
"""
from __future__ import annotations

import json
from typing import Any

import mxnet as mx
import numpy as np

from .constants import DEFAULT_CROP
from .model_zoo import get_model
from .models.info import MODEL_SPECS

__all__ = ['PAPER_GFLOPS', 'count_symbol', 'model_complexity']

#: GFLOPs at 224x224 reported in the paper (Table 1), from :data:`MODEL_SPECS`.
PAPER_GFLOPS = {name: spec.gflops for name, spec in MODEL_SPECS.items()
                if spec.gflops is not None}


def count_symbol(symbol: mx.sym.Symbol, input_shape: tuple[int, ...],
                 input_name: str = 'data') -> dict[str, Any]:
    """Count parameters and MACs of ``symbol`` for one input of ``input_shape`` (batch 1).

    Returns:
        ``{'params', 'macs', 'conv_macs', 'fc_macs', 'norm_elements'}`` (integers);
        ``norm_elements`` counts BatchNorm outputs (one multiply-add each, once folded).
    """
    internals = symbol.get_internals()
    arg_shapes, out_shapes, _ = internals.infer_shape(**{input_name: input_shape})
    if arg_shapes is None:
        raise ValueError(f'shape inference failed for input shape {input_shape}')
    args = dict(zip(internals.list_arguments(), arg_shapes))
    outs = dict(zip(internals.list_outputs(), out_shapes))
    batch = int(input_shape[0])
    params = sum(int(np.prod(s)) for name, s in args.items() if name != input_name)
    conv = fc = norm = 0
    nodes = json.loads(symbol.tojson())['nodes']
    for node in nodes:
        if node['op'] == 'BatchNorm':
            norm += int(np.prod(outs[f'{node["name"]}_output'])) // batch
            continue
        if node['op'] not in ('Convolution', 'FullyConnected'):
            continue
        weight = args.get(nodes[node['inputs'][1][0]]['name'])  # inputs: data, weight[, bias]
        if weight is None:
            raise ValueError(f'cannot find the weight of {node["name"]!r}')
        out = outs[f'{node["name"]}_output']
        if node['op'] == 'Convolution':
            # weight: (out_channels, in_channels / groups, kh, kw)
            conv += int(np.prod(out)) // batch * int(np.prod(weight[1:]))
        else:
            fc += int(np.prod(weight))
    return {'params': params, 'macs': conv + fc, 'conv_macs': conv, 'fc_macs': fc,
            'norm_elements': norm}


def model_complexity(name: str, input_size: int = DEFAULT_CROP, classes: int = 1000,
                     **kwargs: Any) -> dict[str, Any]:
    """Parameters and GFLOPs (multiply-accumulates) of a registered model.

    The network is traced symbolically: no weights are allocated.

    Returns:
        ``{'model', 'input_size', 'params', 'gflops', 'gflops_bn', 'macs'}``: ``gflops`` as the
        module docstring defines it, ``gflops_bn`` adding one multiply-add per BatchNorm output
        (the scale and shift that remain once BN is folded into the convolution).
    """
    net = get_model(name, classes=classes, **kwargs)
    symbol = net(mx.sym.var('data'))
    counts = count_symbol(symbol, (1, getattr(net, 'in_channels', 3), input_size, input_size))
    return {'model': name, 'input_size': input_size, 'params': counts['params'],
            'gflops': counts['macs'] / 1e9,
            'gflops_bn': (counts['macs'] + counts['norm_elements']) / 1e9, 'macs': counts['macs']}
