"""DropBlock under ``register_gluoncv(override=True)``: GluonCV's controls, whatever the import
order, and the default (``dropblock='gluoncv'``) against ``dropblock='effective'``.

The names below are bound at import, before any override, as a user's module imported earlier
would bind them.
"""
from __future__ import annotations

import functools

import mxnet as mx
import numpy as np
import pytest
from gluoncv import model_zoo as gcv_zoo
from gluoncv.model_zoo import resnest as gcv_resnest
from gluoncv.model_zoo.rcnn.rcnn import custom_rcnn_fpn
from gluoncv.model_zoo.resnest import resnest26 as early_resnest26
from gluoncv.model_zoo.resnest import resnest50 as early_resnest50
from gluoncv.nn import dropblock as gcv_dropblock
from gluoncv.nn.dropblock import DropBlockScheduler
from gluoncv.nn.dropblock import set_drop_prob as early_set_drop_prob
from gluoncv.nn.feature import FPNFeatureExpander
from mxnet import autograd, gluon

import gluon_resnest
from conftest import assert_close_to_largest
from gluon_resnest.layers import DropBlock
from gluon_resnest.models import ResNeSt

GLUONCV_RESNEST = gcv_resnest.ResNeSt
GLUONCV_SET_DROP_PROB = gcv_dropblock.set_drop_prob
SIZE = 96  # GluonCV's DropBlock needs its input_size; 96 leaves 3x3 maps at stage 4
# resnest26's stage outputs (GluonCV's operator names; 2 blocks per stage).
R26_OUTPUTS = ['layers1_relu7_fwd', 'layers2_relu7_fwd', 'layers3_relu7_fwd', 'layers4_relu7_fwd']


def dropblocks(net: gluon.Block, kind: type = DropBlock) -> list:
    found: list = []
    net.apply(lambda b: found.append(b) if isinstance(b, kind) else None)
    return found


def train_outputs(net: gluon.Block, x: mx.nd.NDArray, seeds=(1, 2)) -> list[np.ndarray]:
    """The first output in training mode (no recording) under each random seed."""
    outs = []
    for seed in seeds:
        mx.random.seed(seed)
        with autograd.train_mode():
            out = net(x)
        outs.append((out[0] if isinstance(out, (list, tuple)) else out).asnumpy())
    return outs


def seed_spread(net: gluon.Block, x: mx.nd.NDArray) -> float:
    """How far two training-mode calls differing only in the random seed are apart."""
    a, b = train_outputs(net, x)
    return float(np.abs(a - b).max())


def fpn(backbone: gluon.HybridBlock) -> FPNFeatureExpander:
    """GluonCV's FPN feature extractor, as its detectors build it (the backbone is traced)."""
    features = FPNFeatureExpander(network=backbone, outputs=R26_OUTPUTS, num_filters=[32] * 4,
                                  use_1x1=True, use_upsample=True, use_elewadd=True,
                                  use_p6=True, no_bias=True)
    features.initialize()
    return features


def test_names_bound_before_the_override_act_on_ours():
    x = mx.nd.random.uniform(shape=(1, 3, SIZE, SIZE))
    with gluon_resnest.gluoncv_override():
        assert gcv_dropblock.set_drop_prob is not GLUONCV_SET_DROP_PROB
        net = early_resnest26(input_size=SIZE)  # GluonCV's function, imported earlier
        assert isinstance(net, ResNeSt)
        blocks = dropblocks(net)
        assert len(blocks) == 12 and all(b.drop_prob == 0.1 for b in blocks)
        assert all(isinstance(b, gcv_dropblock.DropBlock) for b in blocks)
        net.initialize(mx.init.Xavier())
        assert seed_spread(net, x) > 0
        net.apply(functools.partial(early_set_drop_prob, 0.0))  # GluonCV's original function
        assert [b.drop_prob for b in blocks] == [0.0] * 12
        assert seed_spread(net, x) == 0
        net.apply(functools.partial(early_set_drop_prob, 0.3))
        assert seed_spread(net, x) > 0
    assert not isinstance(early_resnest26(), ResNeSt)  # GluonCV's own again


def test_early_set_drop_prob_takes_effect_at_the_next_trace_as_with_gluoncv():
    """GluonCV's original function only sets the attribute; a hybridized network, GluonCV's
    as ours, uses it once re-traced (``hybridize()``, which DropBlockScheduler calls)."""
    x = mx.nd.random.uniform(shape=(1, 3, SIZE, SIZE))
    own = early_resnest26(input_size=SIZE)
    with gluon_resnest.gluoncv_override():
        ours = early_resnest26(input_size=SIZE)
    for net in (own, ours):
        net.initialize(mx.init.Xavier())
        net.hybridize()
        with autograd.record():  # traced while training: the DropBlocks are in the graph
            net(x)
        net.apply(functools.partial(early_set_drop_prob, 0.0))
        assert seed_spread(net, x) > 0, type(net)
        net.hybridize()
        assert seed_spread(net, x) == 0, type(net)


def test_gluoncv_resnest_class_builds_ours_or_gluoncv_for_a_foreign_block():
    with gluon_resnest.gluoncv_override():
        for kwargs in ({}, {'dilated': True}, {'dilation': 2}):
            served = gcv_zoo.get_model('resnest50', **kwargs)
            early = early_resnest50(**kwargs)
            assert isinstance(early, ResNeSt) and type(early) is not ResNeSt
            assert sorted(early.collect_params()) == sorted(served.collect_params())
            assert ([b.drop_prob for b in dropblocks(early)]
                    == [b.drop_prob for b in dropblocks(served)])
            # The same graph, operator for operator (names included).
            data = mx.sym.var('data')
            assert early(data).tojson() == served(data).tojson()
        with pytest.raises(ValueError, match='dilation must be 1, 2 or 4'):
            early_resnest50(dilation=3)

        class MyBottleneck(gcv_resnest.Bottleneck):
            pass

        class MyResNeSt(gcv_resnest.ResNeSt):
            pass

        # GluonCV builds what ours cannot stand for: a user's block, a subclass.
        foreign = gcv_resnest.ResNeSt(MyBottleneck, [1, 1, 1, 1], use_splat=True)
        assert type(foreign) is GLUONCV_RESNEST
        subclass = MyResNeSt(gcv_resnest.Bottleneck, [1, 1, 1, 1], use_splat=True)
        assert type(subclass) is MyResNeSt
    own = GLUONCV_RESNEST(gcv_resnest.Bottleneck, [1, 1, 1, 1], use_splat=True)
    assert type(own) is GLUONCV_RESNEST
    assert gcv_dropblock.set_drop_prob is GLUONCV_SET_DROP_PROB
    assert not isinstance(early_resnest50(), ResNeSt)


def test_unknown_dropblock_mode_is_refused_and_patches_nothing():
    with pytest.raises(ValueError, match="dropblock must be one of"):
        gluon_resnest.register_gluoncv(override=True, dropblock='on')
    assert gcv_dropblock.set_drop_prob is GLUONCV_SET_DROP_PROB
    assert type(GLUONCV_RESNEST(gcv_resnest.Bottleneck, [1, 1, 1, 1])) is GLUONCV_RESNEST


def test_fpn_backbone_dropblock_by_default_is_gluoncv_s():
    """GluonCV's FPN traces its backbone when built, outside training: its DropBlock is not in
    the graph and no control brings it back. Ours by default behaves the same."""
    x = mx.nd.random.uniform(shape=(1, 3, 64, 64))
    own = fpn(early_resnest26(input_size=64))
    with gluon_resnest.gluoncv_override():
        ours = fpn(early_resnest26(input_size=64))
    for features in (own, ours):
        assert seed_spread(features, x) == 0
        DropBlockScheduler(features, 0.5, 0.5, 10)(0)
        assert seed_spread(features, x) == 0
    assert gluon_resnest.set_drop_prob(ours, 0.5) == 0  # nothing traced to set


def test_fpn_backbone_dropblock_obeys_controls_in_effective_mode():
    x = mx.nd.random.uniform(shape=(1, 3, 64, 64))
    with gluon_resnest.gluoncv_override(dropblock='effective'):
        features = fpn(early_resnest26())
        assert seed_spread(features, x) > 0  # GluonCV's default 0.1, in the traced graph
        DropBlockScheduler(features, 0.0, 0.2, num_epochs=2)(-1)  # probability 0
        assert seed_spread(features, x) == 0
        features.apply(functools.partial(gcv_dropblock.set_drop_prob, 0.3))
        assert seed_spread(features, x) > 0
        # Inference stays exact whatever the probability.
        assert np.array_equal(features(x)[0].asnumpy(), features(x)[0].asnumpy())
        # A set_drop_prob bound before the override finds no DropBlock object in a detector:
        # the backbone exists only as the traced graph.
        features.apply(functools.partial(early_set_drop_prob, 0.0))
        assert seed_spread(features, x) > 0
    assert gluon_resnest.set_drop_prob(features, 0.0) == 12
    assert seed_spread(features, x) == 0


@pytest.mark.parametrize('dropblock', ['gluoncv', 'effective'])
def test_gluoncv_detection_builders_follow_the_mode(dropblock):
    """``custom_rcnn_fpn`` keeps GluonCV's 0.1; the SyncBatchNorm COCO builder sets 0 before
    tracing. In effective mode a scheduler reaches every traced DropBlock of both."""
    x = mx.nd.random.uniform(shape=(1, 3, 64, 64))
    effective = dropblock == 'effective'
    with gluon_resnest.gluoncv_override(dropblock=dropblock):
        features, _, _ = custom_rcnn_fpn(False, 'resnest50')
        detector = gcv_zoo.get_model('faster_rcnn_fpn_syncbn_resnest50_coco',
                                     pretrained_base=False)
        features.initialize()
        assert (seed_spread(features, x) > 0) is effective
        DropBlockScheduler(features, 0.0, 0.0, 1)(0)
        assert seed_spread(features, x) == 0
        # 27 DropBlocks in ResNeSt-50's stages 3 and 4, all traced into the detector's graph.
        assert gluon_resnest.set_drop_prob(detector, 0.1) == (27 if effective else 0)


def _twins(dropblock: str) -> tuple[gluon.HybridBlock, gluon.HybridBlock]:
    """GluonCV's own resnest26 and ours under the override, with the same weights."""
    own = early_resnest26(input_size=SIZE)
    own.initialize(mx.init.Xavier())
    with gluon_resnest.gluoncv_override(dropblock=dropblock):
        ours = early_resnest26(input_size=SIZE)
    ours.initialize()
    for name, param in own.collect_params().items():
        ours.collect_params()[name].set_data(param.data())
    return own, ours


@pytest.mark.parametrize('dropblock', ['gluoncv', 'effective'])
def test_hybridized_then_trained_as_gluoncv_by_default(dropblock):
    """A network hybridized and first called at inference keeps that graph for training:
    GluonCV's DropBlock is not in it. After training-mode calls (BatchNorm statistics move)
    ours by default still equals GluonCV's; in effective mode it dropped blocks and differs."""
    x = mx.nd.random.uniform(-1, 1, shape=(2, 3, SIZE, SIZE))
    own, ours = _twins(dropblock)
    outputs = []
    for net in (own, ours):
        net.hybridize()
        net(x)  # first call: inference, as an evaluation or a shape check before training
        for step in range(3):  # training steps without an update: only BatchNorm moves
            mx.random.seed(step)
            with autograd.record():
                loss = net(x).sum()
            loss.backward()  # MXNet's BatchNorm updates its running statistics in backward
        outputs.append(net(x).asnumpy())
    if dropblock == 'gluoncv':
        assert_close_to_largest(outputs[1], outputs[0])
        assert seed_spread(ours, x) == 0
    else:
        assert np.abs(outputs[1] - outputs[0]).max() > 1e-3 * np.abs(outputs[0]).max()
        assert seed_spread(ours, x) > 0


def test_traced_while_training_drops_in_both_modes_and_inference_is_exact():
    """Traced in training, GluonCV's DropBlock drops while training (and, a defect, at
    inference too); ours drops while training and is an identity at inference."""
    x = mx.nd.random.uniform(-1, 1, shape=(1, 3, SIZE, SIZE))
    own, ours = _twins('gluoncv')
    for net in (own, ours):
        net.hybridize()
        with autograd.record():
            net(x)
        assert seed_spread(net, x) > 0
    assert not np.array_equal(own(x).asnumpy(), own(x).asnumpy())
    assert np.array_equal(ours(x).asnumpy(), ours(x).asnumpy())
