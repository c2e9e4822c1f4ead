"""Our ResNeSt inside GluonCV's own detection and segmentation models.

GluonCV's nets saved with random weights stand in for its published checkpoints: they must load
unchanged into the same GluonCV builders once ``register_gluoncv(override=True)`` serves our
backbone, and give the same outputs.
"""
from __future__ import annotations

import functools

import mxnet as mx
import numpy as np
import pytest
from gluoncv import model_zoo as gcv_zoo
from gluoncv.data.batchify import FasterRCNNTrainBatchify
from gluoncv.data.transforms.presets.rcnn import FasterRCNNDefaultTrainTransform
from gluoncv.loss import MixSoftmaxCrossEntropyLoss
from gluoncv.model_zoo import resnest as gcv_resnest
from gluoncv.model_zoo import segbase
from gluoncv.model_zoo.model_store import short_hash
from gluoncv.model_zoo.model_zoo import _models as gcv_models
from gluoncv.model_zoo.rcnn.faster_rcnn.faster_rcnn import custom_faster_rcnn_fpn
from gluoncv.model_zoo.rcnn.rcnn import custom_rcnn_fpn
from gluoncv.nn import dropblock as gcv_dropblock
from mxnet import autograd, gluon

import gluon_resnest
from conftest import assert_close_to_largest, randomize_norm_stats
from gluon_resnest.layers import DropBlock, SplitAttention
from gluon_resnest.models import Bottleneck, ResNeSt

GLUONCV_NAMES = ['resnest14', 'resnest26', 'resnest50', 'resnest101', 'resnest200', 'resnest269']
# The operator outputs GluonCV's FPN detectors take from each backbone (its rcnn sources).
FPN_OUTPUTS = {
    'resnest50': ['layers1_relu11_fwd', 'layers2_relu15_fwd', 'layers3_relu23_fwd',
                  'layers4_relu11_fwd'],
    'resnest101': ['layers1_relu11_fwd', 'layers2_relu15_fwd', 'layers3_relu91_fwd',
                   'layers4_relu11_fwd'],
    'resnest269': ['layers1_relu11_fwd', 'layers2_relu119_fwd', 'layers3_relu191_fwd',
                   'layers4_relu31_fwd'],
}
SIZE = 64  # crop size of the segmentation tests: stride-8 maps of 8x8


class GluonCVResNeSt(gcv_resnest.ResNeSt):
    """GluonCV's own network even under the override, which builds ours for its class itself."""


@pytest.fixture
def ours():
    """GluonCV builds our ResNeSt inside the test; GluonCV's own afterwards, even on failure."""
    with gluon_resnest.gluoncv_override() as names:
        yield names
    assert gcv_resnest.resnest50.__module__ == 'gluoncv.model_zoo.resnest'


class BackboneSpy:
    """Records every :class:`ResNeSt` built (a spy: construction itself is unchanged)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.built: list[ResNeSt] = []
        init = ResNeSt.__init__

        def record(net, *args, **kwargs):
            init(net, *args, **kwargs)
            self.built.append(net)

        monkeypatch.setattr(ResNeSt, '__init__', record)


def drop_probs(net: gluon.Block, kind: type) -> list[float]:
    found: list[float] = []
    net.apply(lambda b: found.append(b.drop_prob) if isinstance(b, kind) else None)
    return found


def _save_random(net: gluon.HybridBlock, path: str, sample: mx.nd.NDArray,
                 select: str = '.*') -> str:
    net.collect_params(select).initialize(mx.init.Xavier())
    net.initialize()  # the rest: GluonCV's FPN layers name their own initialiser
    net(sample)  # completes deferred initialisation (the FPN layers)
    randomize_norm_stats(net)
    # The FPN's symbolic SyncBatchNorm keeps its statistics as moving_mean / moving_var.
    rng = np.random.RandomState(1)
    for name, param in net.collect_params('.*moving_(mean|var)').items():
        low, high = (0.5, 1.5) if name.endswith('var') else (-0.2, 0.2)
        param.set_data(mx.nd.array(rng.uniform(low, high, param.shape)))
    net.save_parameters(path)
    return path


def test_override_rebinds_every_gluoncv_binding_and_undoes():
    originals = {name: getattr(gcv_resnest, name) for name in GLUONCV_NAMES}
    original_set = gcv_dropblock.set_drop_prob
    assert gluon_resnest.register_gluoncv() == ['resnest50_fast_1s1x64d', 'resnest50_fast_1s2x40d',
                                                'resnest50_fast_1s4x24d', 'resnest50_fast_2s1x64d',
                                                'resnest50_fast_2s2x40d', 'resnest50_fast_4s1x64d',
                                                'resnest50_fast_4s2x40d', 'resnetd50']
    try:
        assert segbase.resnest50 is originals['resnest50']  # override=False: as before
        names = gluon_resnest.register_gluoncv(override=True)
        assert set(GLUONCV_NAMES) <= set(names)
        for name in GLUONCV_NAMES:
            served = getattr(gcv_resnest, name)
            assert served is not originals[name] and served.__name__ == name
            assert getattr(gcv_zoo, name) is served and gcv_models[name] is served
        for name in ['resnest50', 'resnest101', 'resnest200', 'resnest269']:
            assert getattr(segbase, name) is getattr(gcv_resnest, name)
        assert gcv_dropblock.set_drop_prob is not original_set
        assert isinstance(segbase.get_backbone('resnest50', pretrained=False), ResNeSt)
    finally:
        gluon_resnest.unregister_gluoncv()
    for name in GLUONCV_NAMES:
        assert getattr(gcv_resnest, name) is originals[name]
        assert getattr(gcv_zoo, name) is originals[name] and gcv_models[name] is originals[name]
    assert segbase.resnest50 is originals['resnest50']
    assert gcv_dropblock.set_drop_prob is original_set
    assert 'resnetd50' not in gcv_models
    assert not isinstance(segbase.get_backbone('resnest50', pretrained=False), ResNeSt)


@pytest.mark.parametrize('name', [
    'resnest14', 'resnest26', 'resnest50',
    pytest.param('resnest101', marks=pytest.mark.slow),
    pytest.param('resnest200', marks=pytest.mark.slow),
    pytest.param('resnest269', marks=pytest.mark.slow)])
def test_served_builders_take_gluoncv_defaults(name):
    reference = getattr(gcv_resnest, name)()
    with gluon_resnest.gluoncv_override():
        served = gcv_zoo.get_model(name)
    assert isinstance(served, ResNeSt)
    assert drop_probs(served, DropBlock) == drop_probs(reference, gcv_dropblock.DropBlock)
    assert sorted(served.collect_params()) == sorted(reference.collect_params())
    # Our own get_model keeps its defaults.
    assert drop_probs(gluon_resnest.get_model(name), DropBlock) == []


def test_served_pretrained_reads_gluoncv_cache_only(ours, tmp_path, monkeypatch):
    monkeypatch.delenv('MXNET_HOME', raising=False)
    # Not cached: downloaded, here from the closed loopback port that conftest sets.
    with pytest.raises(FileNotFoundError, match=r'cannot fetch http://127\.0\.0\.1:\d+/gluon/'
                                                r'models/resnest14-7e0b0cae\.zip: Connection'):
        gcv_zoo.get_model('resnest14', pretrained=True, root=str(tmp_path))
    # GluonCV's own resnest14.
    gluoncv_net = GluonCVResNeSt(gcv_resnest.Bottleneck, [1, 1, 1, 1], deep_stem=True,
                                 avg_down=True, avd=True, use_splat=True, name_prefix='resnest_')
    cached = tmp_path / f'resnest14-{short_hash("resnest14")}.params'
    _save_random(gluoncv_net, str(cached), mx.nd.zeros((1, 3, 64, 64)))
    net = gcv_zoo.get_model('resnest14', pretrained=True, root=str(tmp_path))
    assert isinstance(net, ResNeSt)
    x = mx.nd.random.uniform(-1, 1, shape=(1, 3, 64, 64))
    assert_close_to_largest(net(x).asnumpy(), gluoncv_net(x).asnumpy())


@pytest.mark.parametrize('name', ['resnest50', 'resnest101',
                                  pytest.param('resnest269', marks=pytest.mark.slow)])
def test_fpn_output_names_exist(name, ours):
    net = getattr(gcv_resnest, name)(pretrained=False)
    assert isinstance(net, ResNeSt)
    internals = net(mx.sym.var('data')).get_internals().list_outputs()
    missing = [out for out in FPN_OUTPUTS[name] if f'resnest_{out}_output' not in internals]
    assert not missing
    # Each is the output of a stage (the input of the next one).
    net.initialize()
    features = gluon.SymbolBlock(
        [net(mx.sym.var('data')).get_internals()[f'resnest_{out}_output']
         for out in FPN_OUTPUTS[name]], mx.sym.var('data'), params=net.collect_params())
    x = mx.nd.random.uniform(shape=(1, 3, 32, 32))
    y = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    for got, stage in zip(features(x), [net.layer1, net.layer2, net.layer3, net.layer4]):
        y = stage(y)
        np.testing.assert_array_equal(got.asnumpy(), y.asnumpy())


def test_dropblock_scheduler_and_set_drop_prob_drive_ours(ours):
    net = gcv_zoo.get_model('resnest26', classes=4)
    net.initialize()
    net.hybridize()
    x = mx.nd.random.uniform(shape=(2, 3, 64, 64))
    # Reference: the same weights in a net without DropBlock, run in training mode too.
    plain = gluon_resnest.get_model('resnest26', classes=4)
    plain.initialize()
    for (_, src), (_, dst) in zip(sorted(net._collect_params_with_prefix().items()),
                                  sorted(plain._collect_params_with_prefix().items())):
        dst.set_data(src.data())

    def train_mode(block):
        with autograd.record():
            out = block(x)
        return out.asnumpy()

    without_dropblock = train_mode(plain)
    gcv_dropblock.DropBlockScheduler(net, 0.0, 0.2, num_epochs=4)(0)
    assert drop_probs(net, DropBlock) == [pytest.approx(0.05)] * 12
    assert not np.allclose(train_mode(net), without_dropblock, atol=1e-3)
    net.apply(functools.partial(gcv_dropblock.set_drop_prob, 0.0))  # no hybridize() after it
    assert drop_probs(net, DropBlock) == [0.0] * 12
    np.testing.assert_allclose(train_mode(net), without_dropblock, rtol=1e-5, atol=1e-5)


def _segmenter(kind: str, backbone: str, **kwargs) -> gluon.HybridBlock:
    return segbase.get_segmentation_model(kind, dataset='ade20k', backbone=backbone,
                                          pretrained_base=False, base_size=SIZE,
                                          crop_size=SIZE, **kwargs)


def _check_segmenter_matches(kind: str, backbone: str, tmp_path, monkeypatch) -> None:
    reference = _segmenter(kind, backbone)
    x = mx.nd.random.uniform(-1, 1, shape=(2, 3, SIZE, SIZE))
    path = _save_random(reference, str(tmp_path / f'{kind}_{backbone}.params'), x)
    spy = BackboneSpy(monkeypatch)
    with gluon_resnest.gluoncv_override():
        if kind == 'deeplab':
            net = gcv_zoo.get_model(f'deeplab_{backbone}_ade', pretrained=False,
                                    pretrained_base=False, base_size=SIZE, crop_size=SIZE)
        else:
            net = _segmenter(kind, backbone)
    assert len(spy.built) == 1 and type(spy.built[0]) is ResNeSt
    assert net.layer4 is spy.built[0].layer4 and net.relu is spy.built[0].relu
    assert all(isinstance(block, Bottleneck) for block in net.layer3)
    assert isinstance(net.layer1[0].conv2, SplitAttention)
    net.load_parameters(path)
    expected = [out.asnumpy() for out in reference(x)]
    net.hybridize()
    for got, want in zip(net(x), expected):
        assert_close_to_largest(got.asnumpy(), want)


@pytest.mark.parametrize('kind', ['deeplab', pytest.param('psp', marks=pytest.mark.slow),
                                  pytest.param('fcn', marks=pytest.mark.slow)])
def test_segmenters_load_gluoncv_weights_resnest50(kind, tmp_path, monkeypatch):
    _check_segmenter_matches(kind, 'resnest50', tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['deeplab', 'psp', 'fcn'])
def test_segmenters_load_gluoncv_weights_resnest101(kind, tmp_path, monkeypatch):
    _check_segmenter_matches(kind, 'resnest101', tmp_path, monkeypatch)


def _fpn_features_match(build, tmp_path, monkeypatch) -> None:
    reference = build()
    x = mx.nd.random.uniform(-1, 1, shape=(1, 3, 128, 128))
    path = _save_random(reference, str(tmp_path / 'detector.params'), x, select='resnest_.*')
    spy = BackboneSpy(monkeypatch)
    with gluon_resnest.gluoncv_override():
        net = build()
    assert len(spy.built) == 1 and type(spy.built[0]) is ResNeSt
    backbone = spy.built[0].collect_params()
    # The FPN graph runs on the very parameters of our backbone.
    shared = net.features.collect_params()
    assert all(shared[key] is param for key, param in backbone.items() if key in shared)
    assert sum(key in shared for key in backbone) > 0.9 * len(list(backbone))
    net.load_parameters(path)
    for got, want in zip(net.features(x), reference.features(x)):
        assert_close_to_largest(got.asnumpy(), want.asnumpy())


def _custom_fpn(backbone: str, roi_mode: str = 'align') -> gluon.HybridBlock:
    return custom_faster_rcnn_fpn(['a', 'b'], pretrained_base=False, base_network_name=backbone,
                                  num_fpn_filters=64, num_box_head_dense_filters=64,
                                  short=128, max_size=128, min_stage=2, max_stage=6,
                                  strides=(4, 8, 16, 32, 64),
                                  roi_mode=roi_mode, roi_size=(7, 7), rpn_channel=64,
                                  scales=(2, 4, 8, 16, 32), alloc_size=(64, 64), clip=4.14,
                                  rpn_min_size=1, rpn_train_pre_nms=256, rpn_train_post_nms=64,
                                  rpn_test_pre_nms=256, rpn_test_post_nms=64, num_sample=32,
                                  max_num_gt=8)


@pytest.mark.parametrize('backbone', ['resnest50',
                                      pytest.param('resnest101', marks=pytest.mark.slow)])
def test_custom_rcnn_fpn_loads_gluoncv_weights(backbone, tmp_path, monkeypatch):
    """``custom_rcnn_fpn`` with plain (frozen) BatchNorm, through custom_faster_rcnn_fpn."""
    _fpn_features_match(functools.partial(_custom_fpn, backbone), tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize('backbone', ['resnest50', 'resnest101'])
def test_faster_rcnn_fpn_syncbn_loads_gluoncv_weights(backbone, tmp_path, monkeypatch):
    build = functools.partial(gcv_zoo.get_model, f'faster_rcnn_fpn_syncbn_{backbone}_coco',
                              pretrained=False, pretrained_base=False)
    _fpn_features_match(build, tmp_path, monkeypatch)


def test_custom_rcnn_fpn_train_patterns_select_the_same_parameters():
    """GluonCV picks what to train by parameter name; ours carries GluonCV's names."""
    reference, _, _ = custom_rcnn_fpn(False, 'resnest50')
    with gluon_resnest.gluoncv_override():
        features, _, _ = custom_rcnn_fpn(False, 'resnest50')
    pattern = '|'.join(['.*dense', '.*rpn', '.*down(2|3|4)_conv', '.*layers(2|3|4)_conv', 'P'])
    assert sorted(features.collect_params(pattern)) == sorted(reference.collect_params(pattern))
    assert sorted(features.collect_params()) == sorted(reference.collect_params())


def _fit(net: gluon.HybridBlock, loss_fn, steps: int, lr: float) -> list[float]:
    params = net.collect_train_params() if hasattr(net, 'collect_train_params') \
        else net.collect_params()
    trainer = gluon.Trainer(params, 'sgd', {'learning_rate': lr, 'momentum': 0.9})
    losses = []
    for _ in range(steps):
        with autograd.record():
            loss = loss_fn()
        loss.backward()
        trainer.step(1)
        losses.append(float(loss.asscalar()))
    return losses


@pytest.mark.parametrize('norm', [
    {}, pytest.param({'norm_layer': mx.gluon.contrib.nn.SyncBatchNorm,
                      'norm_kwargs': {'num_devices': 1}}, marks=pytest.mark.slow)])
def test_deeplab_trains_with_our_backbone(norm, ours):
    net = segbase.get_segmentation_model('deeplab', dataset='pascal_voc', backbone='resnest50',
                                         pretrained_base=False, aux=True, base_size=SIZE,
                                         crop_size=SIZE, **norm)
    assert isinstance(net.layer3[0], Bottleneck)
    assert isinstance(net.layer3[0].bn1, norm.get('norm_layer', gluon.nn.BatchNorm))
    assert drop_probs(net, DropBlock)[0] == 0.1  # GluonCV's default, active while training
    net.initialize(mx.init.Xavier())
    net.hybridize()
    criterion = MixSoftmaxCrossEntropyLoss(aux=True)
    x = mx.nd.random.uniform(-1, 1, shape=(2, 3, SIZE, SIZE))
    y = mx.nd.array(np.random.RandomState(0).randint(0, 21, (2, SIZE, SIZE)))
    losses = _fit(net, lambda: criterion(*net(x), y).mean(), steps=4, lr=0.01)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert float(net.layer1[0].conv1.weight.grad().abs().sum().asscalar()) > 0
    assert float(net.conv1[0].weight.grad().abs().sum().asscalar()) > 0


def _calibrate_frozen_norms(backbone: ResNeSt, x: mx.nd.NDArray) -> None:
    """Give a frozen-BatchNorm backbone the statistics a trained one has (here: of ``x``).

    Random weights with frozen unit statistics leave a 50-layer net unnormalised and make any
    training step diverge; a twin with live BatchNorm (momentum 0) records each layer's
    statistics, which are then copied by parameter name (both carry GluonCV's names).
    """
    twin = gluon_resnest.get_model('resnest50', features_only=True,
                                   norm_kwargs={'momentum': 0.0})
    twin.initialize()
    frozen = backbone.collect_params()
    for name, param in twin.collect_params().items():
        param.set_data(frozen[name].data())
    with autograd.record():
        twin(x)
    for name, param in twin.collect_params('.*running_(mean|var)').items():
        frozen[name].set_data(param.data())


def test_custom_faster_rcnn_fpn_trains_with_our_backbone(ours, monkeypatch):
    """GluonCV's losses (RPN and R-CNN), targets and train patterns, as in its train script."""
    spy = BackboneSpy(monkeypatch)
    # RoI pooling, not RoI align: on CPU, MXNet 1.9's ROIAlign leaves the rows of the RoIs that
    # GluonCV masks out per pyramid level unwritten, so their sum holds stale memory.
    net = _custom_fpn('resnest50', roi_mode='pool')
    backbone = spy.built[0]
    net.initialize()  # the backbone's and the FPN's weights carry their own initialisers
    transform = FasterRCNNDefaultTrainTransform(net.short, net.max_size, net, ashape=net.ashape,
                                                multi_stage=True, flip_p=0.0)
    image = mx.nd.array(np.random.RandomState(0).randint(0, 256, (128, 128, 3)), dtype='uint8')
    boxes = np.array([[10, 12, 70, 90, 0], [60, 40, 120, 110, 1]], dtype='float32')
    batch = FasterRCNNTrainBatchify(net, 1)([transform(image, boxes)])
    x, label, rpn_cls_targets, rpn_box_targets, rpn_box_masks = [
        arrays.as_in_context(mx.cpu()) for arrays in batch[:2] + tuple(s[0] for s in batch[2:])]
    _calibrate_frozen_norms(backbone, x)
    sigmoid_ce = gluon.loss.SigmoidBinaryCrossEntropyLoss(from_sigmoid=False)
    softmax_ce = gluon.loss.SoftmaxCrossEntropyLoss()
    rpn_huber, rcnn_huber = gluon.loss.HuberLoss(rho=1 / 9.), gluon.loss.HuberLoss()

    def detection_loss():
        mx.random.seed(0)  # the same anchor and RoI samples at every step
        (cls_pred, box_pred, _, _, _, rpn_score, rpn_box, _, cls_targets, box_targets,
         box_masks, _) = net(x, label[:, :, :4], label[:, :, 4:5])
        rpn_valid = (rpn_cls_targets >= 0).sum()
        rcnn_valid = (cls_targets >= 0).sum()
        losses = [
            sigmoid_ce(rpn_score.squeeze(axis=-1), rpn_cls_targets, rpn_cls_targets >= 0)
            * rpn_cls_targets.size / rpn_valid,
            rpn_huber(rpn_box, rpn_box_targets, rpn_box_masks) * rpn_box.size / rpn_valid,
            softmax_ce(cls_pred, cls_targets, cls_targets.expand_dims(-1) >= 0)
            * cls_targets.size / rcnn_valid,
            rcnn_huber(box_pred, box_targets, box_masks) * box_pred.size / rcnn_valid]
        return mx.nd.add_n(*[loss.sum() for loss in losses])

    losses = _fit(net, detection_loss, steps=4, lr=0.005)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    # The backbone weights GluonCV trains with frozen BatchNorm (stages 2-4) got gradients.
    weight = backbone.layer3[0].conv1.weight
    assert weight.name in net.collect_train_params()
    assert float(weight.grad().abs().sum().asscalar()) > 0


def test_multi_eval_model_runs_with_our_backbone(ours):
    net = segbase.get_segmentation_model('deeplab', dataset='pascal_voc', backbone='resnest50',
                                         pretrained_base=False, base_size=SIZE, crop_size=SIZE)
    assert isinstance(net.layer4[0], Bottleneck)
    net.initialize(mx.init.Xavier())
    evaluator = segbase.MultiEvalModel(net, 21, ctx_list=[mx.cpu()], scales=[0.75, 1.0, 1.5])
    image = mx.nd.random.uniform(-1, 1, shape=(3, 56, 72))
    scores = evaluator(image)
    assert scores.shape == (1, 21, 56, 72) and np.isfinite(scores.asnumpy()).all()
    # At one scale that fits the crop: GluonCV's exp(plain + mirrored) of the logits.
    single = segbase.MultiEvalModel(net, 21, ctx_list=[mx.cpu()], scales=[1.0])
    square = mx.nd.random.uniform(-1, 1, shape=(3, SIZE, SIZE))
    plain = net.evaluate(square.expand_dims(0))
    mirrored = net.evaluate(square.expand_dims(0).flip(axis=3)).flip(axis=3)
    expected = (plain + mirrored).exp().asnumpy()
    assert_close_to_largest(single(square).asnumpy(), expected)
