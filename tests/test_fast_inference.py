"""Float32 inference on oneDNN 3 (gluon_resnest.deploy.fast_inference) against MXNet's own."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

from conftest import assert_close_to_largest, randomize_norm_stats
from gluon_resnest import get_model, list_models, native
from gluon_resnest.deploy import load_exported, write_meta
from gluon_resnest.deploy.fast_inference import fast_inference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(not native.fast_inference_available(),
                                reason=f'oneDNN 3 operators unavailable: '
                                       f'{native.fast_inference_unavailable_reason()}')


def _net(name, seed=0):
    mx.random.seed(seed)
    net = get_model(name, classes=10)
    net.initialize(mx.init.Xavier())
    randomize_norm_stats(net, seed)
    return net


def _input(shape, seed=0):
    return mx.nd.array(np.random.RandomState(seed).uniform(-1, 1, shape).astype(np.float32))


def _ops(block):
    return [n['op'] for n in json.loads(block(mx.sym.var('data')).tojson())['nodes']]


def _has_avx512():
    with open('/proc/cpuinfo', encoding='utf-8') as info:
        return ' avx512f ' in info.read()


AVX512 = _has_avx512()


def _winograd_convs(block, data_shape):
    """Convolutions of ``block``'s graph that run as Winograd on an AVX-512 CPU for an input of
    ``data_shape``: marked for it (3 x 3, stride 1, padding 1), channels per group divisible by
    16, and at least 16 output tiles of 4 x 4."""
    symbol = block(mx.sym.var('data'))
    graph = json.loads(symbol.tojson())
    internals = symbol.get_internals()
    _, shapes, _ = internals.infer_shape(data=data_shape)
    shape_of = dict(zip(internals.list_outputs(), shapes))
    params = block.collect_params()
    found = 0
    for node in graph['nodes']:
        attrs = node.get('attrs', {})
        if node['op'] != 'gluon_resnest_conv' or attrs.get('winograd') != '1':
            continue
        weight = params[graph['nodes'][node['inputs'][1][0]]['name']].data().shape
        groups = int(attrs.get('num_group', '1'))
        n, _, h, w = shape_of[node['name'] + '_output']
        tiles = n * -(-h // 4) * -(-w // 4)
        found += weight[1] % 16 == 0 and weight[0] // groups % 16 == 0 and tiles >= 16
    return found


# radix 2 with the avd pooling in the weighted sum; radix 4 and cardinality 2 with avd first;
# radix 1 (sigmoid attention, MXNet's operators); ResNet-D (no Split-Attention).
@pytest.mark.parametrize('name,radix', [('resnest14', 2), ('resnest50_fast_4s2x40d', 4),
                                        ('resnest50_fast_1s1x64d', 1), ('resnetd50', 0)])
def test_matches_mxnet_inference(name, radix):
    net = _net(name)
    x = _input((2, 3, 64, 64))
    want = net(x).asnumpy()
    plain_ops = _ops(net)
    before = native.onednn_calls()
    fast = fast_inference(net, x)
    got = fast(x).asnumpy()
    calls = {k: v - before[k] for k, v in native.onednn_calls().items()}
    assert_close_to_largest(got, want, 1e-4)
    ops = _ops(fast)
    # Every convolution over a feature map is oneDNN 3's; the attention's convolutions on 1 x 1
    # maps are gluon_resnest_sa_attention's (radix > 1) or MXNet's (the sigmoid gate of radix
    # 1). No BatchNorm is left (folded into the convolutions).
    attention_convs = 2 * plain_ops.count('broadcast_mul') if radix == 1 else \
        2 * plain_ops.count('batch_dot')
    assert ops.count('gluon_resnest_conv') == plain_ops.count('Convolution') - attention_convs
    assert ops.count('Convolution') == (attention_convs if radix == 1 else 0)
    assert 'BatchNorm' not in ops
    blocks = sum(1 for b in _walk(net) if hasattr(b, 'pool_in_conv2'))
    assert ops.count('elemwise_add') == 0 and blocks > 0  # residual sums fused
    if radix > 1:
        assert ops.count('gluon_resnest_sa_sum_nhwc') == ops.count('gluon_resnest_sa_gap_nhwc') \
            == ops.count('gluon_resnest_sa_attention') == blocks
        assert 'softmax' not in ops and 'Reshape' not in ops
        # Read and written in N x H x W x C: no split went through a reorder.
        assert calls['sa_sum_f32_nhwc'] == 2 * blocks and calls['sa_sum_f32_nchw'] == 0
    # Only the stem's first convolution reads the plain input layout; (two runs: the planning
    # one inside fast_inference and ours).
    assert calls['conv_nchw'] == 2
    if radix != 1:
        assert calls['conv_nhwc'] == 2 * (ops.count('gluon_resnest_conv') - 1)
    # The 3 x 3 convolutions of stride 1 with channels per group divisible by 16 ran as Winograd
    # (the stem's second and third, and the Split-Attention's where its groups are wide enough).
    winograd = _winograd_convs(fast, x.shape)
    assert winograd >= (2 if name != 'resnest50_fast_4s2x40d' else 1)
    assert calls['conv_winograd'] == (2 * winograd if AVX512 else 0)
    # The network itself is unchanged.
    assert _ops(net) == plain_ops
    assert_close_to_largest(net(x).asnumpy(), want, 1e-6)


def test_direct_convolutions_without_winograd():
    net = _net('resnest14', seed=7)
    x = _input((2, 3, 48, 40), seed=7)
    want = net(x).asnumpy()
    before = native.onednn_calls()['conv_winograd']
    direct = fast_inference(net, x, winograd=False)
    got = direct(x).asnumpy()
    assert native.onednn_calls()['conv_winograd'] == before
    assert _winograd_convs(direct, x.shape) == 0
    assert_close_to_largest(got, want, 1e-4)
    winograd = fast_inference(net, x)
    assert_close_to_largest(winograd(x).asnumpy(), want, 1e-4)
    assert native.onednn_calls()['conv_winograd'] > before or not AVX512


def test_other_batch_sizes_and_export_reload(tmp_path):
    net = _net('resnest14', seed=1)
    x = _input((4, 3, 64, 64), seed=1)
    fast = fast_inference(net, x)
    got = fast(x).asnumpy()
    one = _input((1, 3, 64, 64), seed=2)
    assert_close_to_largest(fast(one).asnumpy(), net(one).asnumpy(), 1e-4)
    prefix = str(tmp_path / 'fast')
    fast.export(prefix)
    write_meta(prefix, input_size=64)  # the meta file makes it an export
    text = open(f'{prefix}-symbol.json', encoding='utf-8').read()
    assert set(native.operators_in(text)) == {'gluon_resnest_conv', 'gluon_resnest_sa_sum_nhwc',
                                              'gluon_resnest_sa_gap_nhwc',
                                              'gluon_resnest_sa_attention'}
    loaded, _ = load_exported(prefix)
    loaded.hybridize(static_alloc=True, static_shape=True)
    np.testing.assert_array_equal(loaded(x).asnumpy(), got)


@pytest.mark.parametrize('name', ['resnest14', 'resnest50_fast_4s2x40d'])
def test_fused_attention_equals_mxnet_attention(name):
    """The graph with each attention in one gluon_resnest_sa_attention (radix 2; radix 4 with
    two cardinal groups) gives the outputs of the same graph with the attention on MXNet's
    operators."""
    from gluon_resnest.deploy.fast_inference import (
        _symbol_with_native_split_attention,
        fast_inference_graph,
    )

    net = _net(name, seed=8)
    x = _input((3, 3, 48, 48), seed=8)
    symbol = _symbol_with_native_split_attention(net)
    params = {k: p.data() for k, p in net.collect_params().items()}
    aux = {k: v for k, v in params.items() if k in set(symbol.list_auxiliary_states())}
    args = {k: v for k, v in params.items() if k not in aux}
    outputs = {}
    for fuse in (True, False):
        new, a, b, counts = fast_inference_graph(symbol, args, aux, x.shape, winograd=False,
                                                 fuse_attention=fuse)
        ops = [n['op'] for n in json.loads(new.tojson())['nodes']]
        assert counts['attention'] == ops.count('gluon_resnest_sa_attention') == \
            (counts['split_attention'] // 2 if fuse else 0) > 0 or not fuse
        exe = new.bind(mx.cpu(), dict(a, data=x), aux_states=b, grad_req='null')
        outputs[fuse] = exe.forward(is_train=False)[0].asnumpy()
    assert_close_to_largest(outputs[True], outputs[False], 1e-5)


# (batch, pooled channels, fc1 outputs, radix, cardinality): lengths that are not multiples of
# the kernel's 16 lanes, several groups, a batch of 16.
@pytest.mark.parametrize('n,channels,hidden,radix,groups', [
    (1, 64, 32, 2, 1), (16, 40, 24, 4, 2), (3, 51, 33, 2, 3), (2, 256, 128, 3, 1)])
def test_attention_operator_matches_mxnet(n, channels, hidden, radix, groups):
    rng = np.random.RandomState(n + channels)
    g = mx.nd.array(rng.uniform(0, 2, (n, channels, 1, 1)))
    w1 = mx.nd.array(rng.normal(0, 0.3, (hidden, channels // groups, 1, 1)))
    b1 = mx.nd.array(rng.normal(0, 0.3, (hidden,)))
    w2 = mx.nd.array(rng.normal(0, 0.3, (radix * channels, hidden // groups, 1, 1)))
    b2 = mx.nd.array(rng.normal(0, 0.3, (radix * channels,)))
    h = mx.nd.relu(mx.nd.Convolution(g, w1, b1, kernel=(1, 1), num_filter=hidden,
                                     num_group=groups))
    z = mx.nd.Convolution(h, w2, b2, kernel=(1, 1), num_filter=radix * channels,
                          num_group=groups)
    # Cardinal-major (k, r, j) -> softmax over r -> radix-major (r, k, j).
    z = mx.nd.softmax(z.reshape((0, groups, radix, -1)), axis=2)
    want = mx.nd.swapaxes(z, 1, 2).reshape((0, -1, 1, 1)).asnumpy()
    got = mx.nd.gluon_resnest_sa_attention(g, w1, b1, w2, b2, radix=radix, cardinality=groups,
                                           hidden=hidden).asnumpy()
    assert got.shape == (n, radix * channels, 1, 1)
    # Summed in another order than MXNet's convolutions; the softmax's exp scales that.
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.reshape(n, radix, -1).sum(axis=1), 1, rtol=1e-5)


def test_attention_operator_rejects_radix_one():
    with pytest.raises(mx.base.MXNetError, match='radix must be at least 2'):
        mx.nd.gluon_resnest_sa_attention(
            mx.nd.ones((1, 8, 1, 1)), mx.nd.ones((4, 8, 1, 1)), mx.nd.ones((4,)),
            mx.nd.ones((8, 4, 1, 1)), mx.nd.ones((8,)), radix=1, cardinality=1,
            hidden=4).wait_to_read()


def _walk(block):
    yield block
    for child in block._children.values():
        yield from _walk(child)


def _conv_graph(relu, with_sum):
    nodes = [{'op': 'null', 'name': n, 'inputs': []} for n in ('data', 'weight', 'bias')]
    inputs = [[0, 0, 0], [1, 0, 0], [2, 0, 0]]
    if with_sum:
        nodes.append({'op': 'null', 'name': 'residual', 'inputs': []})
        inputs.append([3, 0, 0])
    return nodes, inputs


@pytest.mark.parametrize('kernel,stride,pad,dilate,groups,relu,with_sum', [
    (3, 1, 1, 1, 1, True, False),
    (3, 2, 1, 1, 2, True, False),   # grouped, strided
    (3, 1, 2, 2, 1, False, False),  # dilated
    (1, 1, 0, 1, 1, True, True),    # the bottleneck's last convolution with the residual
    (7, 2, 3, 1, 1, False, True),
])
def test_operator_matches_mxnet_convolution(kernel, stride, pad, dilate, groups, relu, with_sum):
    _check_operator((2, 8, 13, 11), 16, kernel, stride, pad, dilate, groups, relu, with_sum,
                    winograd=False)


# Winograd F(4 x 4, 3 x 3): map sizes that are not multiples of the 4 x 4 tile, a last block
# of tiles that is not full (3 x 6 x 5 = 90 tiles in blocks of 23), 7 x 7 maps (16 and 32
# tiles), groups, the fused sum. Fewer than 32 tiles on several threads take the split schedule
# (test_operator_winograd_split_schedule runs these on two).
WINOGRAD_CASES = [
    ((2, 32, 13, 11), 64, 2, True, False),
    ((3, 48, 21, 17), 32, 1, False, True),
    ((4, 64, 7, 7), 128, 4, True, True),
    ((8, 64, 7, 7), 128, 4, True, True),
    ((1, 32, 14, 14), 64, 2, False, True),
]


@pytest.mark.parametrize('shape,filters,groups,relu,with_sum', WINOGRAD_CASES)
def test_operator_winograd_matches_mxnet_convolution(shape, filters, groups, relu, with_sum):
    before = native.onednn_calls()['conv_winograd']
    _check_operator(shape, filters, 3, 1, 1, 1, groups, relu, with_sum, winograd=True)
    assert native.onednn_calls()['conv_winograd'] == before + (1 if AVX512 else 0)


def test_operator_winograd_split_schedule():
    """The Winograd cases on two OpenMP threads, where those with fewer than 32 tiles split
    the positions' matmul between the threads: the same results."""
    code = ('import sys; sys.path.insert(0, "tests"); import test_fast_inference as t\n'
            'for case in t.WINOGRAD_CASES:\n'
            '    t._check_operator(case[0], case[1], 3, 1, 1, 1, case[2], case[3], case[4],\n'
            '                      winograd=True)\n'
            'print(t.native.onednn_calls()["conv_winograd"])\n')
    env = dict(os.environ, OMP_NUM_THREADS='2')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) == (len(WINOGRAD_CASES) if AVX512 else 0)


def test_operator_winograd_falls_back_to_direct():
    """Marked for Winograd but 8 channels per group (the transforms take 16 at a time), a
    stride of 2, or fewer than 16 output tiles (one 7 x 7 map has 4): direct, and still right."""
    before = native.onednn_calls()['conv_winograd']
    _check_operator((2, 8, 13, 11), 16, 3, 1, 1, 1, 1, True, False, winograd=True)
    _check_operator((2, 32, 13, 11), 32, 3, 2, 1, 1, 1, True, False, winograd=True)
    _check_operator((1, 64, 7, 7), 128, 3, 1, 1, 1, 4, True, True, winograd=True)
    assert native.onednn_calls()['conv_winograd'] == before


def _check_operator(shape, filters, kernel, stride, pad, dilate, groups, relu, with_sum,
                    winograd):
    rng = np.random.RandomState(kernel + stride + groups + shape[1])
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    w = rng.uniform(-1, 1, (filters, shape[1] // groups, kernel, kernel)).astype(np.float32)
    b = rng.uniform(-1, 1, (filters,)).astype(np.float32)
    attrs = {'kernel': f'({kernel}, {kernel})', 'stride': f'({stride}, {stride})',
             'pad': f'({pad}, {pad})', 'dilate': f'({dilate}, {dilate})',
             'num_filter': str(filters), 'num_group': str(groups)}
    want = mx.nd.Convolution(mx.nd.array(x), mx.nd.array(w), mx.nd.array(b), **{
        k: eval(v) if k not in ('num_filter', 'num_group') else int(v)  # noqa: S307
        for k, v in attrs.items()})
    feeds = {'data': mx.nd.array(x), 'weight': mx.nd.array(w), 'bias': mx.nd.array(b)}
    if with_sum:
        residual = rng.uniform(-1, 1, want.shape).astype(np.float32)
        want = want + mx.nd.array(residual)
        feeds['residual'] = mx.nd.array(residual)
    if relu:
        want = mx.nd.relu(want)
    nodes, inputs = _conv_graph(relu, with_sum)
    nodes.append({'op': 'gluon_resnest_conv', 'name': 'conv', 'inputs': inputs,
                  'attrs': dict(attrs, relu=str(int(relu)), sum=str(int(with_sum)),
                                winograd=str(int(winograd)))})
    symbol = mx.sym.load_json(json.dumps({'nodes': nodes, 'heads': [[len(nodes) - 1, 0, 0]],
                                          'arg_nodes': list(range(len(nodes) - 1))}))
    got = symbol.eval(ctx=mx.cpu(), **feeds)[0]
    assert got.shape == want.shape
    if winograd:
        # Its transforms round differently: judged against the largest output.
        assert_close_to_largest(got.asnumpy(), want.asnumpy(), 1e-5)
    else:
        np.testing.assert_allclose(got.asnumpy(), want.asnumpy(), rtol=1e-5, atol=1e-5)


def test_operator_rejects_a_weight_of_the_wrong_shape():
    nodes, inputs = _conv_graph(False, False)
    nodes.append({'op': 'gluon_resnest_conv', 'name': 'conv', 'inputs': inputs,
                  'attrs': {'kernel': '(3, 3)', 'num_filter': '4'}})
    symbol = mx.sym.load_json(json.dumps({'nodes': nodes, 'heads': [[3, 0, 0]],
                                          'arg_nodes': [0, 1, 2]}))
    with pytest.raises(mx.base.MXNetError, match=r'gluon_resnest_conv: shape \[4,2,3,3\] where '
                                                 r'\[4,3,3,3\] is expected'):
        symbol.eval(ctx=mx.cpu(), data=mx.nd.ones((1, 3, 8, 8)), weight=mx.nd.ones((4, 2, 3, 3)),
                    bias=mx.nd.ones((4,)))[0].wait_to_read()


def test_unavailable_operators_are_reported(tmp_path):
    """Without the oneDNN-layout library ``fast_inference(strict=True)`` says why instead of
    failing later."""
    code = ('import mxnet as mx\n'
            'from gluon_resnest import get_model, native\n'
            'from gluon_resnest.deploy.fast_inference import fast_inference\n'
            'assert not native.fast_inference_available()\n'
            'net = get_model("resnest14", classes=10); net.initialize()\n'
            'try:\n'
            '    fast_inference(net, mx.nd.ones((1, 3, 32, 32)), strict=True)\n'
            'except native.NativeBuildError as err:\n'
            '    print("ERROR", err)\n')
    env = dict(os.environ, GLUON_RESNEST_NATIVE_ONEDNN='0')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env,
                          check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert 'ERROR float32 inference on oneDNN 3 is unavailable' in proc.stdout


FAST_OPERATORS = ['gluon_resnest_conv', 'gluon_resnest_sa_sum_nhwc', 'gluon_resnest_sa_gap_nhwc',
                  'gluon_resnest_sa_attention']


def test_export_tool_fast_graph_predicts_like_the_plain_export(tmp_path):
    """``tools/export.py --fast`` writes a graph on the oneDNN 3 operators; ``tools/predict.py``
    loads it (and the libraries) and gives the plain export's answers."""
    from PIL import Image
    from tools_cli import run_tool

    net = _net('resnest14', seed=3)
    net.save_parameters(str(tmp_path / 'net.params'))
    image = tmp_path / 'photo.jpg'
    Image.fromarray(np.random.RandomState(3).randint(0, 256, (80, 100, 3), np.uint8)).save(
        image, quality=95)
    answers = []
    for flags in ([], ['--fast'], ['--fast', '--no-winograd']):
        prefix = tmp_path / '_'.join(['plain'] + flags) / 'net'
        done = run_tool('export', '--model', 'resnest14', '--params', tmp_path / 'net.params',
                        '--input-size', '64', '--preprocess', '--prefix', prefix, *flags)
        assert done.returncode == 0, done.stderr
        text = (prefix.parent / 'net-symbol.json').read_text()
        assert ('"gluon_resnest_conv"' in text) is bool(flags)
        meta = json.loads((prefix.parent / 'net-meta.json').read_text())
        assert meta['native_operators'] == (FAST_OPERATORS if flags else [])
        assert ("calls gluon_resnest's native operators" in done.stderr) is bool(flags)
        assert ('"winograd": "1"' in text) is (flags == ['--fast'])
        done = run_tool('predict', '--prefix', prefix, '--json', image)
        assert done.returncode == 0, done.stderr
        answers.append(json.loads(done.stdout))
    plain = answers[0]
    for fast in answers[1:]:
        assert [r['index'] for r in fast[str(image)]] == [r['index'] for r in plain[str(image)]]
        np.testing.assert_allclose([r['probability'] for r in fast[str(image)]],
                                   [r['probability'] for r in plain[str(image)]], atol=1e-5)
    done = run_tool('export', '--model', 'resnest14', '--prefix', tmp_path / 'x' / 'net',
                    '--no-winograd')
    assert done.returncode == 2 and 'applies to the --fast graph only' in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize('name', list_models())
def test_zoo_matches_mxnet_inference(name):
    """Every registered model at 224x224, 1000 classes, batch 2: fast_inference equals MXNet."""
    from tools_cli import tame_residual_branches

    mx.random.seed(1)
    net = get_model(name, classes=1000)
    net.initialize(mx.init.Xavier())
    randomize_norm_stats(net, 1)
    tame_residual_branches(net, 1)
    x = _input((2, 3, 224, 224), seed=2)
    want = net(x).asnumpy()
    got = fast_inference(net, x)(x).asnumpy()
    err, scale = float(np.abs(got - want).max()), float(np.abs(want).max())
    print(f'{name}: max abs error {err:.3g}, largest output {scale:.3g}')
    assert err <= 1e-4 * max(scale, 1.0), (err, scale)


def test_new_weights_take_effect():
    """The operator caches each convolution's reordered weights; weights set afterwards (or a
    new network of the same shape) must be used, not the cached copy."""
    net = _net('resnest14', seed=4)
    x = _input((2, 3, 32, 32), seed=4)
    fast = fast_inference(net, x)
    before = fast(x).asnumpy()
    params = fast.collect_params()
    scaled = [name for name, param in params.items()
              if name.endswith('weight') and param.data().ndim == 4 and param.data().shape[2] == 3]
    assert scaled
    for name in scaled:
        params[name].set_data(params[name].data() * 0.5)
    after = fast(x).asnumpy()
    assert np.abs(after - before).max() > 1e-3
    # The Gluon network with the same weights scaled (BatchNorm folding is linear in them).
    originals = net.collect_params()
    for name in scaled:
        originals[name].set_data(originals[name].data() * 0.5)
    assert_close_to_largest(after, net(x).asnumpy(), 1e-4)
    # Another network of the same geometry, its own answers.
    for seed in (5, 6):
        other = _net('resnest14', seed=seed)
        got = fast_inference(other, x)(x).asnumpy()
        assert_close_to_largest(got, other(x).asnumpy(), 1e-4)
        del other


def test_rejects_a_sample_that_is_not_a_float32_image_batch():
    net = _net('resnest14')
    with pytest.raises(ValueError, match=r'float32 batch of shape \(N, C, H, W\), got float16 of '
                                         r'shape \(2, 3, 32\)'):
        fast_inference(net, mx.nd.zeros((2, 3, 32), dtype='float16'))
