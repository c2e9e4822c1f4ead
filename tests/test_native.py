"""The native INT8 Split-Attention operator: built from source, exact against MXNet's own chain."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

from conftest import randomize_norm_stats
from gluon_resnest import get_model, native
from gluon_resnest.deploy import export_network, load_exported, write_meta
from gluon_resnest.deploy.quantization import fold_network, quantize_network
from gluon_resnest.layers.split_attn import SplitAttention
from gluon_resnest.native import reference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64


@pytest.fixture(scope='module', autouse=True)
def library():
    try:
        native.load(required=True)
    except native.NativeBuildError as err:
        pytest.skip(f'the native operator library is unavailable here: {err}')
    return native


def _splits(rng, radix, shape):
    return [mx.nd.array(rng.randint(0, 256, shape), dtype='uint8') for _ in range(radix)]


def _mxnet_chain(xs, ranges, atten, out_max, pool):
    """What MXNet runs without the operator (:func:`reference.sa_sum_u8`), as integers."""
    q, lo, hi = reference.sa_sum_u8(mx.nd, atten, [(mx.nd.array([a]), mx.nd.array([b]))
                                                   for a, b in ranges], xs, out_max, pool)
    return q.asnumpy().astype(int), float(lo.asscalar()), float(hi.asscalar())


@pytest.mark.parametrize('radix,pool', [(2, False), (2, True), (4, False), (3, True)])
def test_operator_matches_mxnet_quantized_chain(radix, pool):
    rng = np.random.RandomState(radix + 10 * pool)
    shape = (3, 16, 13, 11)  # odd sides: the pooling's border windows
    xs = _splits(rng, radix, shape)
    ranges = [(0.0, float(rng.uniform(0.5, 3.0))) for _ in range(radix)]
    logits = rng.normal(size=(shape[0], radix, shape[1]))
    atten = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)  # softmax over the radix
    atten = mx.nd.array(atten.reshape(shape[0], radix * shape[1], 1, 1))
    out_max = float(np.mean([hi for _, hi in ranges]) * 0.8)  # some values saturate
    args = [atten] + [mx.nd.array([v]) for pair in ranges for v in pair] + list(xs)
    got, lo, hi = mx.nd.gluon_resnest_sa_sum_u8(*args, radix=radix, max_calib_range=out_max,
                                                pool=int(pool))
    want, want_lo, want_hi = _mxnet_chain(xs, ranges, atten, out_max, pool)
    assert got.dtype == np.uint8 and got.shape == want.shape
    assert (float(lo.asscalar()), float(hi.asscalar())) == pytest.approx((want_lo, want_hi))
    diff = np.abs(got.asnumpy().astype(int) - want)
    # Float32 rounding differs in the order of operations: at most one step, rarely.
    assert diff.max() <= 1
    assert diff.mean() < 1e-3, diff.mean()
    summed, _, _ = _mxnet_chain(xs, ranges, atten, out_max, pool=False)
    assert 0 < (summed == 255).mean() < 0.5  # saturation was exercised


def test_operator_rejects_mismatched_attention():
    x = mx.nd.zeros((2, 8, 4, 4), dtype='uint8')
    one = mx.nd.array([1.0])
    with pytest.raises(mx.base.MXNetError, match='attention of shape'):
        mx.nd.gluon_resnest_sa_sum_u8(mx.nd.zeros((2, 8, 1, 1)), one, one, one, one, x, x,
                                      radix=2, max_calib_range=1.0).wait_to_read()


@pytest.fixture(scope='module')
def small_net():
    mx.random.seed(0)
    net = get_model('resnest14', classes=10)
    net.initialize(mx.init.Xavier(magnitude=2))
    randomize_norm_stats(net, seed=3)
    net(mx.nd.zeros((1, 3, SIZE, SIZE)))
    return net


def test_pool_splits_per_branch_is_exact(small_net):
    rng = np.random.RandomState(1)
    x = mx.nd.array(rng.uniform(-2, 2, (4, 3, SIZE, SIZE)).astype(np.float32))
    joined = fold_network(small_net, x, split_grouped=True, sum_per_branch=False)
    per_branch = fold_network(small_net, x, split_grouped=True, sum_per_branch=True)
    ops = [n['op'] for n in json.loads(per_branch(mx.sym.var('data')).tojson())['nodes']]
    assert 'Concat' not in ops  # the splits are pooled and summed without being joined
    np.testing.assert_allclose(per_branch(x).asnumpy(), joined(x).asnumpy(), rtol=1e-4,
                               atol=1e-5)


def test_quantized_network_uses_the_operator(small_net, tmp_path):
    rng = np.random.RandomState(0)
    calib = [mx.nd.array(rng.uniform(-2, 2, (8, 3, SIZE, SIZE)).astype(np.float32))
             for _ in range(2)]
    x = mx.nd.array(rng.uniform(-2, 2, (32, 3, SIZE, SIZE)).astype(np.float32))
    plain = quantize_network(small_net, calib, native=False)
    fused = quantize_network(small_net, calib, native=True)

    def ops(block):
        return [n['op'] for n in json.loads(block(mx.sym.var('data')).tojson())['nodes']]
    blocks = sum(isinstance(b, SplitAttention) for b in _walk(small_net))
    assert ops(fused).count('gluon_resnest_sa_sum_u8') == blocks > 0
    assert 'gluon_resnest_sa_sum_u8' not in ops(plain) and 'broadcast_mul' in ops(plain)
    assert 'broadcast_mul' not in ops(fused) and 'add_n' not in ops(fused)
    want, got = plain(x).asnumpy(), fused(x).asnumpy()
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 0.05 * scale
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.9
    # An export with the operator reloads (load_exported loads the library) to the same output.
    fused.hybridize(static_alloc=True, static_shape=True)
    out = fused(x).asnumpy()
    prefix = str(tmp_path / 'int8')
    fused.export(prefix)
    write_meta(prefix, input_size=SIZE)  # the meta file makes it an export
    again, _ = load_exported(prefix)
    np.testing.assert_array_equal(again(x).asnumpy(), out)


@pytest.mark.parametrize('name', ['resnest14', 'resnest50_fast_4s1x64d'])  # radix 2 and 4
def test_int8_operator_reads_onednn_layout_in_place(small_net, name):
    """In a quantized network the splits arrive in oneDNN's N x H x W x C layout: the operator
    reads them in place and gives the same bits as after a reorder to N x C x H x W."""
    assert native.onednn_supported() is None  # MXNet 1.9.1 with oneDNN, as installed
    assert native.onednn_loaded()
    if name != 'resnest14':
        small_net = get_model(name, classes=10)
        small_net.initialize(mx.init.Xavier(magnitude=2))
        randomize_norm_stats(small_net, seed=4)
        small_net(mx.nd.zeros((1, 3, SIZE, SIZE)))
    rng = np.random.RandomState(5)
    calib = [mx.nd.array(rng.uniform(-2, 2, (8, 3, SIZE, SIZE)).astype(np.float32))
             for _ in range(2)]
    x = mx.nd.array(rng.uniform(-2, 2, (6, 3, SIZE, SIZE)).astype(np.float32))
    fused = quantize_network(small_net, calib, native=True)
    fused.hybridize(static_alloc=True, static_shape=True)
    blocks = sum(isinstance(b, SplitAttention) for b in _walk(small_net))
    before = native.onednn_calls()
    in_place = fused(x).asnumpy()
    after = native.onednn_calls()
    assert blocks > 0
    assert after['nhwc'] - before['nhwc'] == blocks and after['nchw'] == before['nchw']
    os.environ['GLUON_RESNEST_NATIVE_LAYOUT'] = 'nchw'
    try:
        plain = fused(x).asnumpy()
    finally:
        del os.environ['GLUON_RESNEST_NATIVE_LAYOUT']
    assert native.onednn_calls()['nchw'] - after['nchw'] == blocks
    np.testing.assert_array_equal(in_place, plain)


def test_operator_library_fallback_gives_the_same_bits(tmp_path):
    """GLUON_RESNEST_NATIVE_ONEDNN=0: the operator-library version runs instead, bit for bit."""
    rng = np.random.RandomState(7)
    radix, shape = 2, (2, 16, 9, 7)
    xs = _splits(rng, radix, shape)
    atten = mx.nd.array(rng.uniform(0, 1, (2, radix * 16, 1, 1)).astype(np.float32))
    ranges = [mx.nd.array([v]) for v in (0.0, 2.5, -1.0, 1.5)]
    args = [atten] + ranges + xs
    want = mx.nd.gluon_resnest_sa_sum_u8(*args, radix=radix, max_calib_range=2.0, pool=1)[0]
    path = str(tmp_path / 'inputs.npz')
    np.savez(path, *[a.asnumpy() for a in args])
    script = (
        'import sys\n'
        'import mxnet as mx, numpy as np\n'
        'from gluon_resnest import native\n'
        'native.load(required=True)\n'
        'assert not native.onednn_loaded()\n'
        f'saved = np.load({path!r})\n'
        'args = [mx.nd.array(saved[f"arr_{i}"], dtype=saved[f"arr_{i}"].dtype)\n'
        '        for i in range(len(saved.files))]\n'
        'y = mx.nd.gluon_resnest_sa_sum_u8(*args, radix=2, max_calib_range=2.0, pool=1)[0]\n'
        'sys.stdout.write(y.asnumpy().tobytes().hex())\n'
    )
    env = dict(os.environ, GLUON_RESNEST_NATIVE_ONEDNN='0')
    proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == want.asnumpy().tobytes().hex()


def test_disabled_library_keeps_mxnet_operators(small_net, tmp_path):
    """GLUON_RESNEST_NATIVE=0: quantization stays portable; a native export says what it needs."""
    rng = np.random.RandomState(0)
    calib = [mx.nd.array(rng.uniform(-2, 2, (4, 3, SIZE, SIZE)).astype(np.float32))]
    fused = quantize_network(small_net, calib, native=True)
    fused.hybridize()
    fused(calib[0]).wait_to_read()
    prefix = str(tmp_path / 'int8')
    fused.export(prefix)
    write_meta(prefix, input_size=SIZE)  # the meta file makes it an export
    fp32 = str(tmp_path / 'fp32')
    export_network(small_net, fp32, input_size=SIZE)
    script = (
        'import mxnet as mx, numpy as np, json\n'
        'from gluon_resnest import native\n'
        'from gluon_resnest.deploy import load_exported\n'
        'from gluon_resnest.deploy.quantization import quantize_network\n'
        'from gluon_resnest.errors import InputError\n'
        f'net, _ = load_exported({fp32!r})\n'
        f'x = mx.nd.array(np.random.RandomState(0).uniform(-2, 2, (4, 3, {SIZE}, {SIZE})))\n'
        'q = quantize_network(net, [x])\n'
        "ops = [n['op'] for n in json.loads(q(mx.sym.var('data')).tojson())['nodes']]\n"
        "assert 'gluon_resnest_sa_sum_u8' not in ops and 'broadcast_mul' in ops, ops\n"
        'assert not native.loaded()\n'
        'try:\n'
        f'    load_exported({prefix!r})\n'
        'except InputError as err:\n'
        '    print(err)\n'
    )
    env = dict(os.environ, GLUON_RESNEST_NATIVE='0')
    proc = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and 'needs gluon_resnest\'s native operators' in lines[0], lines
    assert 'GLUON_RESNEST_NATIVE=0' in lines[0] and prefix in lines[0]


def test_loads_beside_horovod():
    """Horovod's MXNet extension is loaded RTLD_GLOBAL; the library must still use its own
    registry (it once died with SIGFPE when loaded after ``import horovod.mxnet``)."""
    script = (
        'import horovod.mxnet\n'
        'import mxnet as mx\n'
        'from gluon_resnest import native\n'
        'native.load(required=True)\n'
        "x = mx.nd.full((2, 4, 5, 5), 100, dtype='uint8')\n"
        'one = mx.nd.array([1.0])\n'
        'a = mx.nd.full((2, 8, 1, 1), 0.5)\n'
        'y = mx.nd.gluon_resnest_sa_sum_u8(a, one, one, one, one, x, x, radix=2,\n'
        '                                  max_calib_range=1.0)[0]\n'
        'print(int(y.asnumpy().min()), int(y.asnumpy().max()))\n'
    )
    proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.split() == ['100', '100']


def test_build_reports_a_missing_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
    monkeypatch.setenv('GLUON_RESNEST_CACHE_DIR', str(tmp_path / 'cache'))
    with pytest.raises(native.NativeBuildError, match='no C\\+\\+ compiler'):
        native.build()
    assert not (tmp_path / 'cache').exists()


def test_module_entry_point_prints_the_library():
    proc = subprocess.run([sys.executable, '-m', 'gluon_resnest.native'], capture_output=True,
                          text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    paths = proc.stdout.strip().splitlines()
    assert [os.path.basename(p) for p in paths] == ['libgluon_resnest_ops.so',
                                                   'libgluon_resnest_onednn.so',
                                                   'libgluon_resnest_dnnl3.so']
    assert all(os.path.isfile(p) for p in paths)


@pytest.mark.parametrize('radix,pool', [(2, False), (2, True), (4, True)])
def test_float_operators_match_autograd(radix, pool):
    """gluon_resnest_sa_sum / _sa_gap: outputs and gradients equal MXNet's formulation's."""
    from mxnet import autograd

    rng = np.random.RandomState(radix + pool)
    n, c, h, w = 2, 3, 7, 6  # odd height: the pooling's border windows
    x = mx.nd.array(rng.normal(size=(n, radix * c, h, w)))
    a = mx.nd.array(rng.uniform(size=(n, radix * c, 1, 1)))
    results = []
    for fused in (True, False):
        xx, aa = x.copy(), a.copy()
        xx.attach_grad()
        aa.attach_grad()
        with autograd.record():
            if fused:
                y = mx.nd.gluon_resnest_sa_sum(aa, xx, radix=radix, pool=int(pool))
                g = mx.nd.gluon_resnest_sa_gap(xx, radix=radix)
            else:
                y = reference.sa_sum(mx.nd, aa, xx, radix, pool)
                g = reference.sa_gap(mx.nd, xx, radix)
            weights = mx.nd.array(np.random.RandomState(7).normal(size=y.shape))
            loss = (y * weights).sum() + (g * g).sum() * 3
        loss.backward()
        results.append([y.asnumpy(), g.asnumpy(), xx.grad.asnumpy(), aa.grad.asnumpy()])
    for got, want in zip(*results):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_native_bottleneck_matches_mxnet_operators():
    """A transition block (avd pooling after Split-Attention) built with ``native=True`` gives
    the outputs and gradients of the default block, with the same parameters."""
    from mxnet import autograd
    from mxnet.gluon import nn

    from gluon_resnest.layers.resnet_d import Shortcut
    from gluon_resnest.models.resnest import Bottleneck

    rng = np.random.RandomState(0)
    x = mx.nd.array(rng.normal(size=(4, 64, 14, 14)))
    results, names = [], []
    for fused in (False, True):
        mx.random.seed(0)
        block = Bottleneck(64, 32, strides=2, avd=True, native=fused, prefix='block_',
                           downsample=Shortcut(64, 128, 2, True, nn.BatchNorm, {},
                                               prefix='down_'))
        block.initialize(mx.init.Xavier())
        block.hybridize()
        assert block.pool_in_conv2 is fused
        xx = x.copy()
        xx.attach_grad()
        with autograd.record():
            y = block(xx)
            loss = (y * y).sum()
        loss.backward()
        params = block.collect_params()
        names.append([p.shape for p in params.values()])
        results.append([y.asnumpy(), xx.grad.asnumpy()] +
                       [p.grad().asnumpy() for p in params.values() if p.grad_req != 'null'])
    assert names[0] == names[1]
    # Sums in another order, through training-mode BatchNorm: compare output and input
    # gradient to their own scale, parameter gradients to the largest one (a bias before a
    # BatchNorm has a zero gradient up to rounding).
    for got, want in zip(results[1][:2], results[0][:2]):
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    scale = max(np.abs(g).max() for g in results[0][2:])
    for got, want in zip(results[1][2:], results[0][2:]):
        assert np.abs(got - want).max() <= 1e-4 * scale


def test_training_step_uses_the_native_operators():
    from gluon_resnest.layers.split_attn import SplitAttention

    net = get_model('resnest14', classes=10, native=True)
    attention = [b for b in _walk(net) if isinstance(b, SplitAttention)]
    assert attention and all(b.native for b in attention)
    assert sum(b.pool for b in attention) == 3  # the three avd transitions
    net.initialize(mx.init.Xavier())
    net.hybridize()
    ops = [n['op'] for n in json.loads(net(mx.sym.var('data')).tojson())['nodes']]
    assert ops.count('gluon_resnest_sa_sum') == ops.count('gluon_resnest_sa_gap') == 4
    assert 'broadcast_mul' not in ops


def _train_step(net, x, y):
    """One SGD step's loss, input gradient and parameter gradients (after ``mx.nd.waitall``)."""
    from mxnet import autograd, gluon

    x = x.copy()
    x.attach_grad()
    with autograd.record():
        loss = gluon.loss.SoftmaxCrossEntropyLoss()(net(x), y)
    loss.backward()
    mx.nd.waitall()
    return [loss.asnumpy(), x.grad.asnumpy()] + [
        p.grad().asnumpy() for p in net.collect_params().values() if p.grad_req != 'null']


def _assert_same_gradients(got, want):
    """Loss and input gradient to their own scale, parameter gradients to the largest one (a
    bias before a BatchNorm has a zero gradient up to rounding)."""
    assert len(got) == len(want)
    for g, w in zip(got[:2], want[:2]):
        assert np.abs(g - w).max() <= 1e-4 * np.abs(w).max()
    scale = max(np.abs(w).max() for w in want[2:])
    for g, w in zip(got[2:], want[2:]):
        assert g.shape == w.shape
        assert np.abs(g - w).max() <= 1e-4 * scale


def _training_net(native_ops):
    from gluon_resnest.models import KAIMING_FAN_IN

    mx.random.seed(0)
    net = get_model('resnest14', classes=10, native=native_ops)
    net.initialize(KAIMING_FAN_IN)  # the trainer's initialisation
    net.hybridize(static_alloc=True, static_shape=True)
    return net


def test_training_operators_read_onednn_blocked_layout(monkeypatch):
    """In a hybridized training step the four Split-Attention operators (sum and pooled input,
    forward and backward) read MXNet's oneDNN nChw16c feature maps in place, and their results
    are those of the operator-library path (every input reordered to N x C x H x W)."""
    rng = np.random.RandomState(3)
    x = mx.nd.array(rng.uniform(-1, 1, (4, 3, SIZE, SIZE)))
    y = mx.nd.array(rng.randint(0, 10, 4))
    results = {}
    for layout in ('nchw16c', 'nchw'):
        if layout == 'nchw':
            monkeypatch.setenv('GLUON_RESNEST_NATIVE_LAYOUT', 'nchw')
        net = _training_net(True)
        _train_step(net, x, y)  # builds the graph and the oneDNN layouts
        before = native.onednn_calls()
        results[layout] = _train_step(net, x, y)
        after = native.onednn_calls()
        runs = {k: after[k] - before[k] for k in ('train_nchw16c', 'train_library')}
        # resnest14: four Split-Attention blocks, four operators each (three of them pool)
        if layout == 'nchw16c':
            assert runs == {'train_nchw16c': 16, 'train_library': 0}
        else:
            assert runs == {'train_nchw16c': 0, 'train_library': 16}
    _assert_same_gradients(results['nchw16c'], results['nchw'])


def test_training_network_fuses_batchnorm_and_relu():
    """``native=True`` (the CPU training network) runs each BatchNorm directly followed by a
    ReLU as MXNet's fused oneDNN operator, with the loss and gradients of the same network with
    separate operators; the default network keeps them separate."""
    from gluon_resnest.layers import fuse_norm_relu

    rng = np.random.RandomState(4)
    x = mx.nd.array(rng.uniform(-1, 1, (4, 3, SIZE, SIZE)))
    y = mx.nd.array(rng.randint(0, 10, 4))
    ops = {}
    results = {}
    for name in ('fused', 'separate', 'default'):
        mx.random.seed(0)
        net = get_model('resnest14', classes=10, native=name != 'default')
        if name == 'separate':
            assert fuse_norm_relu(net, False) == 15
            assert fuse_norm_relu(net, False) == 0
        net.initialize(mx.init.Xavier())
        net.hybridize(static_alloc=True, static_shape=True)
        ops[name] = [n['op'] for n in json.loads(net(mx.sym.var('data')).tojson())['nodes']]
        if name != 'default':
            results[name] = _train_step(net, x, y)
    # resnest14: the stem's three pairs, and three in each of the 4 blocks (conv1's and the
    # Split-Attention's two) are fused; the block outputs (after the residual sum) keep theirs.
    assert ops['fused'].count('_contrib_BatchNormWithReLU') == 15
    assert ops['fused'].count('Activation') == 4
    for name in ('separate', 'default'):
        assert ops[name].count('_contrib_BatchNormWithReLU') == 0
        assert ops[name].count('Activation') == 19
        assert ops[name].count('BatchNorm') == ops['fused'].count('BatchNorm') + 15
    _assert_same_gradients(results['fused'], results['separate'])


def test_training_network_exports_separate_operators(tmp_path):
    """An export (and the fast inference graph) of a ``native=True`` network holds MXNet's
    BatchNorm and ReLU, and gives the default network's outputs; the network itself keeps
    training with the fused operator."""
    from gluon_resnest.deploy import fast_inference
    from gluon_resnest.layers import unfused_norm_relu

    net = _training_net(True)
    plain = _training_net(False)
    randomize_norm_stats(net, seed=5)
    for name, param in plain.collect_params().items():
        param.set_data(net.collect_params()[name].data())
    x = mx.nd.array(np.random.RandomState(6).uniform(-1, 1, (2, 3, SIZE, SIZE)))
    want = plain(x).asnumpy()
    symbol_file, _ = export_network(net, str(tmp_path / 'm'), input_size=SIZE)
    with open(symbol_file, encoding='utf-8') as handle:
        exported = handle.read()
    assert '_contrib_BatchNormWithReLU' not in exported and '"Activation"' in exported
    got = load_exported(str(tmp_path / 'm'))[0](x).asnumpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    fast = fast_inference(net, x)
    assert np.abs(fast(x).asnumpy() - want).max() <= 1e-4 * np.abs(want).max()
    traced = json.loads(net(mx.sym.var('data')).tojson())['nodes']
    assert sum(n['op'] == '_contrib_BatchNormWithReLU' for n in traced) == 15
    with unfused_norm_relu(net):
        traced = json.loads(net(mx.sym.var('data')).tojson())['nodes']
        assert not any(n['op'] == '_contrib_BatchNormWithReLU' for n in traced)


def _walk(block):
    yield block
    for child in block._children.values():
        yield from _walk(child)


def test_loading_keeps_mxnet_operator_functions_for_gluoncv():
    """Loading the library must not replace MXNet's operator functions that code imported
    before: GluonCV's FPN compares ``mx.sym.contrib.SyncBatchNorm`` by identity."""
    code = ('import gluoncv.nn.feature as feature\n'
            'from gluoncv.model_zoo import get_model\n'
            'import mxnet as mx\n'
            'before = mx.sym.contrib.SyncBatchNorm\n'
            'from gluon_resnest import native\n'
            'assert native.load(required=True)\n'
            'assert mx.sym.contrib.SyncBatchNorm is before is feature.SyncBatchNorm\n'
            'assert callable(mx.nd.gluon_resnest_sa_sum)\n'
            'assert callable(mx.sym.gluon_resnest_sa_gap)\n'
            'get_model("faster_rcnn_fpn_syncbn_resnest50_coco", pretrained=False,\n'
            '          pretrained_base=False)\n'
            'print("OK")\n')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith('OK')
