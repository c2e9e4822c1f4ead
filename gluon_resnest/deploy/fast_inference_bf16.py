"""The bfloat16 variant of the oneDNN 3 inference graph (``fast_inference(..., dtype='bfloat16')``).

:func:`to_bfloat16` rewrites the float32 graph of
:func:`~gluon_resnest.deploy.fast_inference.fast_inference_graph`:

* every ``gluon_resnest_conv`` becomes ``gluon_resnest_conv_bf16``: bfloat16 feature maps in
  N x H x W x C, weights converted to bfloat16 once (when the operator first runs), float32
  bias and accumulation; the first one converts the float32 input itself. The 3 x 3
  convolutions of stride 1 may run as Winograd F(4 x 4, 3 x 3) (where the map has enough
  tiles, as in float32): float32 transforms, bfloat16 transform-domain products with float32
  accumulation;
* the Split-Attention operators become their bfloat16 variants: the pooled input is summed and
  written in float32, so the attention's small convolutions and softmax stay float32, and the
  weighted sum reads bfloat16 splits and writes bfloat16;
* the stem's max pooling and the shortcuts' average pooling run on the bfloat16 maps (MXNet's
  oneDNN pooling); the global average pooling becomes the pooled input of one split (bfloat16
  in, float32 mean out); every other operator (the classifier) reads float32, through a
  ``Cast`` where its input is bfloat16. The outputs are float32.
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


def _winograd_shape(attrs: dict[str, str]) -> bool:
    """A 3 x 3 convolution of stride 1, padding 1 and no dilation."""
    def pair(key: str, default: str) -> tuple[int, ...]:
        text = attrs.get(key, default).strip('()[] ')
        value = tuple(int(v) for v in text.split(',') if v.strip()) or (0,)
        return value * 2 if len(value) == 1 else value
    return pair('kernel', '0') == (3, 3) and pair('stride', '1') == (1, 1) and \
        pair('pad', '0') == (1, 1) and pair('dilate', '1') == (1, 1)


def to_bfloat16(symbol: mx.sym.Symbol, winograd: bool = True, products: str = 'bfloat16'
                ) -> tuple[mx.sym.Symbol, dict[str, int]]:
    """``symbol`` (a float32 graph on the oneDNN 3 operators) on the bfloat16 operators (see
    the module text); ``counts`` says how many operators were rewritten, how many of the
    convolutions may run as Winograd (``winograd=False``: none; ``products='float32'``: their
    transform-domain products in float32) and how many casts the graph has."""
    if products not in ('bfloat16', 'float32'):
        raise ValueError(f"products: 'bfloat16' or 'float32', got {products!r}")
    graph = Graph(symbol)
    nodes = graph.nodes
    bf16: set[tuple[int, int]] = set()   # new-graph entries (index, output) holding bfloat16
    casts: dict[tuple[int, int, str], list[int]] = {}
    counts = {'conv': 0, 'winograd': 0, 'split_attention': 0, 'pooling': 0, 'cast': 0}

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
            if winograd and _winograd_shape(attrs):
                attrs['winograd'] = '1' if products == 'bfloat16' else '2'
                counts['winograd'] += 1
            if len(inputs) > 3:
                inputs[3] = cast(inputs[3], 'bfloat16')
            counts['conv'] += 1
        elif op == 'gluon_resnest_sa_gap_nhwc':
            inputs[0] = cast(inputs[0], 'bfloat16')
            counts['split_attention'] += 1
        elif op == 'gluon_resnest_sa_sum_nhwc':
            inputs = [cast(inputs[0], 'float32'), cast(inputs[1], 'bfloat16')]
            counts['split_attention'] += 1
        elif op == 'Pooling' and len(inputs) == 1 and (inputs[0][0], inputs[0][1]) in bf16:
            if _global_pool(attrs) and attrs.get('pool_type', 'max') == 'avg':
                # The float32 mean of a bfloat16 map: the pooled input of one split.
                op, attrs = 'gluon_resnest_sa_gap_nhwc', {'radix': '1'}
                counts['split_attention'] += 1
            else:
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
