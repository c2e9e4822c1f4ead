"""GluonCV's ResNeSt checkpoints load unchanged and give the same outputs; zoo registration."""
from __future__ import annotations

import mxnet as mx
import pytest
from gluoncv import model_zoo as gcv_zoo

import gluon_resnest
from conftest import assert_close_to_largest, randomize_norm_stats


@pytest.mark.parametrize('name', ['resnest14', 'resnest26', 'resnest50', 'resnest101'])
def test_gluoncv_params_load_and_match(name, tmp_path):
    ref = gcv_zoo.get_model(name, pretrained=False)
    ref.initialize(mx.init.Xavier())
    randomize_norm_stats(ref)
    path = str(tmp_path / f'{name}.params')
    ref.save_parameters(path)

    ours = gluon_resnest.model_zoo.get_model(name, pretrained=path)
    x = mx.nd.random.uniform(-1, 1, shape=(2, 3, 224, 224))
    expected = ref(x).asnumpy()
    assert_close_to_largest(ours(x).asnumpy(), expected)
    ours.hybridize(static_alloc=True, static_shape=True)
    assert_close_to_largest(ours(x).asnumpy(), expected)


def test_our_params_load_into_gluoncv(tmp_path):
    ours = gluon_resnest.get_model('resnest14')
    ours.initialize(mx.init.Xavier())
    randomize_norm_stats(ours)
    path = str(tmp_path / 'ours.params')
    ours.save_parameters(path)
    ref = gcv_zoo.get_model('resnest14', pretrained=False)
    ref.load_parameters(path)
    x = mx.nd.random.uniform(-1, 1, shape=(1, 3, 96, 96))
    assert_close_to_largest(ref(x).asnumpy(), ours(x).asnumpy())


def test_register_gluoncv():
    try:
        added = gluon_resnest.register_gluoncv()
        assert 'resnest50_fast_2s2x40d' in added and 'resnest50' not in added
        net = gcv_zoo.get_model('resnest50_fast_2s2x40d', classes=7)
        assert isinstance(net, gluon_resnest.models.ResNeSt) and net.classes == 7
        assert not isinstance(gcv_zoo.get_model('resnest50'), gluon_resnest.models.ResNeSt)

        assert 'resnest50' in gluon_resnest.register_gluoncv(override=True)
        assert isinstance(gcv_zoo.get_model('resnest50'), gluon_resnest.models.ResNeSt)
    finally:
        gluon_resnest.unregister_gluoncv()
