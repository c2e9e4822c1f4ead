"""The bfloat16 variant of the oneDNN 3 inference graph (``fast_inference(..., dtype='bfloat16')``).

:func:`to_bfloat16` rewrites the float32 graph of
:func:`~gluon_resnest.deploy.fast_inference.fast_inference_graph`:

* every ``gluon_resnest_conv`` becomes ``gluon_resnest_conv_bf16``: bfloat16 feature maps in
  N x H x W x C, weights converted to bfloat16 once (when the operator first runs), float32
  bias and accumulation; the first one converts the float32 input itself;
* the Split-Attention operators become their bfloat16 variants: the pooled input is summed and
  written in float32, so the attention's small convolutions and softmax stay float32, and the
  weighted sum reads bfloat16 splits and writes bfloat16;
* the stem's max pooling and the shortcuts' average pooling run on the bfloat16 maps (MXNet's
  oneDNN pooling); every other operator (the global pooling, the classifier) reads float32,
  through a ``Cast`` where its input is bfloat16. The outputs are float32.
"""
from __future__ import annotations

import mxnet as mx

from .graph import Graph

__all__ = ['to_bfloat16']

_NATIVE = {'gluon_resnest_conv': 'gluon_resnest_conv_bf16',
           'gluon_resnest_sa_gap_nhwc': 'gluon_resnest_sa_gap_nhwc_bf16',
           'gluon_resnest_sa_sum_nhwc': 'gluon_resnest_sa_sum_nhwc_bf16'}


def _global_pool(attrs: dict[str, str]) -> bool:
    return attrs.get('global_pool', 'False') in ('True', 'true', '1')


def to_bfloat16(symbol: mx.sym.Symbol) -> tuple[mx.sym.Symbol, dict[str, int]]:
    """``symbol`` (a float32 graph on the oneDNN 3 operators) on the bfloat16 operators (see
    the module text); ``counts`` says how many operators were rewritten and how many casts the
    graph has."""
    graph = Graph(symbol)
    nodes = graph.nodes
    bf16: set[tuple[int, int]] = set()   # new-graph entries (index, output) holding bfloat16
    casts: dict[tuple[int, int, str], list[int]] = {}
    counts = {'conv': 0, 'split_attention': 0, 'pooling': 0, 'cast': 0}

    def cast(entry: list[int], dtype: str) -> list[int]:
        """``entry`` (new graph) as ``dtype``, through one ``Cast`` per entry and type (not
        ``amp_cast``: MXNet's ``tojson`` and ``export`` leave those out)."""
        is_bf16 = (entry[0], entry[1]) in bf16
        if is_bf16 == (dtype == 'bfloat16'):
            return entry
        key = (entry[0], entry[1], dtype)
        if key not in casts:
            name = f"{graph.new_nodes[entry[0]]['name']}_{dtype}"
            index = graph.add({'op': 'Cast', 'name': name, 'attrs': {'dtype': dtype},
                               'inputs': [list(entry)]})
            counts['cast'] += 1
            casts[key] = [index, 0, 0]
            if dtype == 'bfloat16':
                bf16.add((index, 0))
        return list(casts[key])

    for i, node in enumerate(nodes):
        op = node['op']
        inputs = [graph.remap(e) for e in node['inputs']]
        if op == 'null':
            graph.keep(i)
            continue
        attrs = dict(graph.attrs(i))
        if op == 'gluon_resnest_conv':
            attrs.pop('winograd', None)
            if len(inputs) > 3:
                inputs[3] = cast(inputs[3], 'bfloat16')
            counts['conv'] += 1
        elif op == 'gluon_resnest_sa_gap_nhwc':
            inputs[0] = cast(inputs[0], 'bfloat16')
            counts['split_attention'] += 1
        elif op == 'gluon_resnest_sa_sum_nhwc':
            inputs = [cast(inputs[0], 'float32'), cast(inputs[1], 'bfloat16')]
            counts['split_attention'] += 1
        elif op == 'Pooling' and not _global_pool(attrs) and len(inputs) == 1 and \
                (inputs[0][0], inputs[0][1]) in bf16:
            counts['pooling'] += 1
        else:
            inputs = [cast(e, 'float32') for e in inputs]
        index = graph.add(dict(node, op=_NATIVE.get(op, op), attrs=attrs, inputs=inputs))
        graph.index[i] = index
        if op in ('gluon_resnest_conv', 'gluon_resnest_sa_sum_nhwc') or \
                (op == 'Pooling' and (inputs[0][0], inputs[0][1]) in bf16):
            bf16.add((index, 0))
    for entry in graph.heads:
        new = graph.remap(entry)
        if (new[0], new[1]) in bf16:
            graph.drop(entry[0], [cast(new, 'float32')] * (entry[1] + 1))
    return graph.to_symbol(), counts
