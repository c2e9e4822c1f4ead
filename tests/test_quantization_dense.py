"""The attention's 1x1 convolutions of pooled maps as FullyConnected (quantization graph pass)."""
from __future__ import annotations

import json

import mxnet as mx
import numpy as np
import pytest

from conftest import randomize_norm_stats
from gluon_resnest import get_model
from gluon_resnest.deploy.inference import fold_batchnorm
from gluon_resnest.deploy.quantization import (
    dense_pointwise_convolutions,
    quantize_network,
    split_grouped_convolutions,
)


def _network(cardinality: int = 1, seed: int = 1):
    mx.random.seed(seed)
    net = get_model('resnest14', classes=10, cardinality=cardinality)
    net.initialize(mx.init.Xavier(magnitude=2))
    randomize_norm_stats(net, seed=seed + 4)
    net.hybridize()
    net(mx.nd.zeros((1, 3, 32, 32)))
    symbol = net(mx.sym.var('data'))
    params = {k: v.data() for k, v in net.collect_params().items()}
    args = {k: v for k, v in params.items() if k in symbol.list_arguments()}
    aux = {k: v for k, v in params.items() if k in symbol.list_auxiliary_states()}
    return net, symbol, args, aux


def _run(sym, args, aux, x):
    exe = sym.bind(mx.cpu(), dict(args, data=x), aux_states=aux)
    return exe.forward(is_train=False)[0].asnumpy()


def _nodes(sym):
    return json.loads(sym.tojson())['nodes']


@pytest.mark.parametrize('cardinality', [1, 2])
def test_dense_pointwise_is_exact_at_every_size(cardinality):
    """fc1 and fc2 of each Split-Attention block (4 blocks; per group after the split for
    cardinality 2) become FullyConnected; the FP32 outputs are unchanged at several input
    sizes, including 32 x 32 where stage 4's ordinary 1x1 convolutions also read 1 x 1 maps
    (they must stay convolutions)."""
    _, symbol, args, aux = _network(cardinality)
    symbol, args, aux = fold_batchnorm(symbol, args, aux)
    symbol, args, aux = split_grouped_convolutions(symbol, args, aux)
    convs = sum(n['op'] == 'Convolution' for n in _nodes(symbol))
    dense, dargs = dense_pointwise_convolutions(symbol, args)
    nodes = _nodes(dense)
    fcs = [n for n in nodes if n['op'] == 'FullyConnected']
    assert len(fcs) == 1 + 4 * 2 * cardinality  # the classifier and fc1/fc2 per block (group)
    assert sum(n['op'] == 'Convolution' for n in nodes) == convs - 4 * 2 * cardinality
    for fc in fcs:
        weight = nodes[fc['inputs'][1][0]]['name']
        assert dargs[weight].ndim == 2 and args[weight].ndim == (2 if 'dense' in weight else 4)
    # The inputs are left alone.
    assert sum(n['op'] == 'Convolution' for n in _nodes(symbol)) == convs
    for size in (32, 48, 64):
        x = mx.nd.random.uniform(-2, 2, (2, 3, size, size))
        ref = _run(symbol, args, aux, x)
        out = _run(dense, dargs, aux, x)
        assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max(), size


def test_dense_pointwise_leaves_other_graphs_alone():
    """No global pooling before a 1x1 convolution: nothing to rewrite, even on a 1 x 1 map."""
    data = mx.sym.var('data')
    conv = mx.sym.Convolution(data, kernel=(1, 1), num_filter=4, name='c')
    out = mx.sym.Pooling(conv, kernel=(1, 1), global_pool=True, pool_type='avg')
    args = {'c_weight': mx.nd.ones((4, 3, 1, 1)), 'c_bias': mx.nd.zeros(4)}
    same, sargs = dense_pointwise_convolutions(out, args)
    assert [n['op'] for n in _nodes(same)] == [n['op'] for n in _nodes(out)]
    assert sargs['c_weight'].shape == (4, 3, 1, 1)


def test_dense_pointwise_output_keeps_its_shape():
    """A rewritten convolution that is the graph's output (or read by an operator that needs
    4-d input) is reshaped back to (N, K, 1, 1)."""
    data = mx.sym.var('data')
    pooled = mx.sym.Pooling(data, kernel=(1, 1), global_pool=True, pool_type='avg')
    fc1 = mx.sym.Activation(mx.sym.Convolution(pooled, kernel=(1, 1), num_filter=5,
                                               name='fc1'), act_type='relu')
    fc2 = mx.sym.Convolution(fc1, kernel=(1, 1), num_filter=6, name='fc2')
    out = mx.sym.Group([fc2, mx.sym.broadcast_mul(data, mx.sym.slice_axis(
        fc2, axis=1, begin=0, end=3))])
    rng = np.random.RandomState(0)
    args = {'fc1_weight': rng.randn(5, 3, 1, 1), 'fc1_bias': rng.randn(5),
            'fc2_weight': rng.randn(6, 5, 1, 1), 'fc2_bias': rng.randn(6)}
    args = {k: mx.nd.array(v) for k, v in args.items()}
    dense, dargs = dense_pointwise_convolutions(out, args)
    assert [n['op'] for n in _nodes(dense)].count('FullyConnected') == 2
    x = mx.nd.array(rng.randn(2, 3, 5, 5))
    ref = out.bind(mx.cpu(), dict(args, data=x)).forward()
    got = dense.bind(mx.cpu(), dict(dargs, data=x)).forward()
    for a, b in zip(ref, got):
        assert a.shape == b.shape
        np.testing.assert_allclose(b.asnumpy(), a.asnumpy(), rtol=1e-5, atol=1e-6)


def test_quantized_attention_runs_as_int8_fully_connected():
    """In the INT8 graph the attention layers are oneDNN INT8 inner products and no
    convolution reads a pooled map; the result matches the convolution version's within
    the quantization error of either against FP32."""
    net, _, _, _ = _network(seed=2)
    rng = np.random.RandomState(0)
    calib = [mx.nd.array(rng.uniform(-2, 2, (8, 3, 32, 32)).astype(np.float32))
             for _ in range(2)]
    x = mx.nd.array(rng.uniform(-2, 2, (16, 3, 32, 32)).astype(np.float32))
    ref = net(x).asnumpy()
    dense = quantize_network(net, calib, native=False)
    convs = quantize_network(net, calib, native=False, dense_pointwise=False)
    nodes = _nodes(dense(mx.sym.var('data')))
    fcs = [n for n in nodes if n['op'] == '_sg_mkldnn_fully_connected']
    assert len(fcs) == 1 + 4 * 2
    assert all(str(n['attrs'].get('quantized')).lower() == 'true' for n in fcs)
    conv_nodes = sum(n['op'] == '_sg_mkldnn_conv' for n in _nodes(convs(mx.sym.var('data'))))
    assert sum(n['op'] == '_sg_mkldnn_conv' for n in nodes) == conv_nodes - 4 * 2

    def error(out):
        return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    got, base = dense(x).asnumpy(), convs(x).asnumpy()
    assert error(got) <= 1.25 * error(base) + 0.02
    assert np.mean(got.argmax(1) == ref.argmax(1)) >= 0.85
