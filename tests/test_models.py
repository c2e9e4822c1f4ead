"""Every registered model: shape, gradients, hybridized == imperative, export round trip."""
from __future__ import annotations

import functools

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

import gluon_resnest
from conftest import assert_close_to_largest, randomize_norm_stats

SIZE = 64
MODELS = gluon_resnest.list_models()


@functools.lru_cache(maxsize=1)
def _net(name: str) -> mx.gluon.HybridBlock:
    net = gluon_resnest.get_model(name, classes=10)
    net.initialize(mx.init.Xavier())
    randomize_norm_stats(net)
    return net


def _input(batch: int = 2, size: int = SIZE) -> mx.nd.NDArray:
    return mx.nd.random.uniform(-1, 1, shape=(batch, 3, size, size))


def test_list_models_has_every_paper_model():
    expected = {'resnest14', 'resnest26', 'resnest50', 'resnest101', 'resnest200', 'resnest269',
                'resnest50_fast_1s1x64d', 'resnest50_fast_2s1x64d', 'resnest50_fast_4s1x64d',
                'resnest50_fast_1s2x40d', 'resnest50_fast_2s2x40d', 'resnest50_fast_4s2x40d',
                'resnest50_fast_1s4x24d', 'resnetd50'}
    assert set(MODELS) == expected
    assert gluon_resnest.list_models('resnest50_fast_*s1x64d') == [
        'resnest50_fast_1s1x64d', 'resnest50_fast_2s1x64d', 'resnest50_fast_4s1x64d']


@pytest.mark.parametrize('name', MODELS)
def test_every_model(name, tmp_path):
    net = _net(name)
    net.hybridize(active=False)
    x = _input()

    # Output shape, and every trainable parameter receives a non-zero gradient.
    with autograd.record():
        out = net(x)
        loss = (out * mx.nd.random.normal(shape=out.shape)).sum()
    loss.backward()
    assert out.shape == (2, 10)
    trainable = {k: p for k, p in net.collect_params().items() if p.grad_req != 'null'}
    assert trainable
    no_grad = [k for k, p in trainable.items() if not np.abs(p.grad().asnumpy()).sum() > 0]
    assert not no_grad, f'parameters without gradient: {no_grad[:5]}'

    # Inference: imperative == hybridized == exported SymbolBlock.
    imperative = net(x).asnumpy()
    assert np.isfinite(imperative).all()
    net.hybridize(static_alloc=True, static_shape=True)
    hybrid = net(x).asnumpy()
    assert_close_to_largest(hybrid, imperative)
    prefix = str(tmp_path / name)
    net.export(prefix)
    imported = mx.gluon.SymbolBlock.imports(f'{prefix}-symbol.json', ['data'],
                                            f'{prefix}-0000.params')
    assert_close_to_largest(imported(x).asnumpy(), imperative)
    net.hybridize(active=False)
