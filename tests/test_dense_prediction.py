"""Dilated backbones (output stride 8/16) and stage outputs C2..C5."""
from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest
from gluoncv import model_zoo as gcv_zoo

import gluon_resnest
from conftest import assert_close_to_largest, randomize_norm_stats


@pytest.mark.parametrize('output_stride,strides', [(32, (4, 8, 16, 32)), (16, (4, 8, 16, 16)),
                                                   (8, (4, 8, 8, 8))])
def test_stage_outputs(output_stride, strides):
    net = gluon_resnest.get_model('resnest14', features_only=True, output_stride=output_stride)
    net.initialize()
    net.hybridize()
    feats = net(mx.nd.zeros((1, 3, 128, 128)))
    assert [f.shape for f in feats] == [(1, c, 128 // s, 128 // s) for c, s in
                                        zip((256, 512, 1024, 2048), strides)]
    assert 'fc.weight' not in net._collect_params_with_prefix()


@pytest.mark.parametrize('kwargs', [dict(dilated=True), dict(dilation=2)])
def test_dilated_matches_gluoncv(kwargs, tmp_path):
    """Same weights and same outputs as GluonCV's dilated ResNeSt (its ``dilated``/``dilation``)."""
    ref = gcv_zoo.get_model('resnest14', pretrained=False, **kwargs)
    ref.initialize(mx.init.Xavier())
    randomize_norm_stats(ref)
    path = str(tmp_path / 'dilated.params')
    ref.save_parameters(path)
    ours = gluon_resnest.model_zoo.get_model('resnest14', pretrained=path, **kwargs)
    x = mx.nd.random.uniform(-1, 1, shape=(1, 3, 96, 96))
    assert_close_to_largest(ours(x).asnumpy(), ref(x).asnumpy())


def test_classifier_weights_load_into_backbone(tmp_path):
    clf = gluon_resnest.get_model('resnest14')
    clf.initialize(mx.init.Xavier())
    randomize_norm_stats(clf)
    path = str(tmp_path / 'clf.params')
    clf.save_parameters(path)
    backbone = gluon_resnest.get_model('resnest14', features_only=True)
    backbone.load_parameters(path, ignore_extra=True)
    x = mx.nd.random.uniform(shape=(1, 3, 64, 64))
    c5 = backbone(x)[-1]
    expected = clf.fc(c5.mean(axis=(2, 3))).asnumpy()
    np.testing.assert_allclose(clf(x).asnumpy(), expected, rtol=1e-5, atol=1e-6)
