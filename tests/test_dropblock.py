"""DropBlock: active only while training, any input size, probability changeable, hybridized."""
from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

import gluon_resnest
from gluon_resnest.layers import DropBlock, set_drop_prob


def _dropped_fraction(block, shape=(4, 16, 40, 40)):
    x = mx.nd.ones(shape)
    with autograd.train_mode():
        y = block(x).asnumpy()
    return float((y == 0).mean()), y


@pytest.mark.parametrize('hybridize', [False, True])
def test_drop_rate_and_rescaling(hybridize):
    block = DropBlock(0.1, 3)
    if hybridize:
        block.hybridize(static_alloc=True)
    frac, y = _dropped_fraction(block)
    assert 0.06 < frac < 0.14
    kept = y[y != 0]
    # survivors are rescaled so that the expected activation is unchanged (per sample)
    assert np.allclose(y.reshape(4, -1).mean(axis=1), 1.0, atol=1e-5)
    assert kept.min() > 1.0
    # dropped regions are 3x3 blocks: every dropped pixel has a dropped 4-neighbour
    zero = y == 0
    padded = np.pad(zero, ((0, 0), (0, 0), (1, 1), (1, 1)))
    neighbours = (padded[..., :-2, 1:-1] | padded[..., 2:, 1:-1] | padded[..., 1:-1, :-2]
                  | padded[..., 1:-1, 2:])
    assert (neighbours[zero]).all()


def test_inference_is_identity_without_retrace():
    block = DropBlock(0.2, 3)
    block.hybridize(static_alloc=True, static_shape=True)
    x = mx.nd.random.uniform(shape=(2, 8, 20, 20))
    frac, _ = _dropped_fraction(block, (2, 8, 20, 20))
    assert frac > 0.05
    graph = block._cached_op
    np.testing.assert_array_equal(block(x).asnumpy(), x.asnumpy())
    assert block._cached_op is graph  # the same traced graph served both modes


def test_probability_can_change_during_training():
    block = DropBlock(0.05, 3)
    block.hybridize(static_alloc=True)
    low, _ = _dropped_fraction(block)
    assert set_drop_prob(block, 0.3) == 1
    high, _ = _dropped_fraction(block)
    assert high > 3 * low
    set_drop_prob(block, 0.0)
    zero, _ = _dropped_fraction(block)
    assert zero == 0.0
    with pytest.raises(ValueError):
        set_drop_prob(block, 1.0)


def test_net_with_dropblock_runs_at_any_size_hybridized():
    net = gluon_resnest.get_model('resnest14', dropblock_prob=0.1, classes=10)
    net.initialize(mx.init.Xavier())
    assert sum(isinstance(b, DropBlock) for b in _blocks(net)) == 6  # last two stages only
    net.hybridize(static_alloc=True)
    for size in (224, 256, 320, 416, 225):
        x = mx.nd.random.uniform(shape=(2, 3, size, size))
        with autograd.record():
            out = net(x)
        out.backward()
        assert out.shape == (2, 10)
        a, b = net(x).asnumpy(), net(x).asnumpy()  # inference: deterministic
        np.testing.assert_array_equal(a, b)
    assert set_drop_prob(net, 0.05) == 6


def _blocks(net):
    found = []
    net.apply(found.append)
    return found


def test_graph_modes():
    x = mx.sym.var('data')
    ops = {}
    for graph in ('auto', 'training', 'always'):
        for prob in (0.0, 0.1):
            for training in (False, True):
                with autograd.train_mode() if training else autograd.predict_mode():
                    out = DropBlock(prob, 3, graph=graph)(x)
                ops[graph, prob, training] = '_random_uniform_like' in out.tojson()
    assert ops == {('auto', 0.0, False): False, ('auto', 0.0, True): False,
                   ('auto', 0.1, False): True, ('auto', 0.1, True): True,
                   ('training', 0.0, False): False, ('training', 0.0, True): False,
                   ('training', 0.1, False): False, ('training', 0.1, True): True,
                   ('always', 0.0, False): True, ('always', 0.0, True): True,
                   ('always', 0.1, False): True, ('always', 0.1, True): True}
    with pytest.raises(ValueError, match='graph must be one of'):
        DropBlock(0.1, 3, graph='never')


def test_set_drop_prob_rewrites_an_imported_graph(tmp_path):
    """A graph traced once (exported, then SymbolBlock.imports) takes a new probability."""
    block = DropBlock(0.0, 3, graph='always')
    block.hybridize()
    x = mx.nd.ones((2, 8, 20, 20))
    block(x)
    block.export(str(tmp_path / 'db'))
    imported = mx.gluon.SymbolBlock.imports(str(tmp_path / 'db-symbol.json'), ['data'])
    assert _dropped_fraction(imported, x.shape)[0] == 0.0
    assert set_drop_prob(imported, 0.3) == 1
    assert _dropped_fraction(imported, x.shape)[0] > 0.15
    np.testing.assert_array_equal(imported(x).asnumpy(), x.asnumpy())  # inference: identity
    assert set_drop_prob(imported, 0.0) == 1
    assert _dropped_fraction(imported, x.shape)[0] == 0.0
