"""The radix-major Split-Attention block equals the paper's equations (1)-(3), group by group."""
from __future__ import annotations

import itertools

import mxnet as mx
import numpy as np
import pytest

from conftest import randomize_norm_stats
from gluon_resnest.layers import SplitAttention, attention_channels

EPS = 1e-5  # BatchNorm's default epsilon


def _bn(x, gamma, beta, mean, var):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + EPS) * gamma.reshape(
        shape) + beta.reshape(shape)


def _conv2d(x, w, stride, pad):
    """Plain (ungrouped) 2-D convolution in float64: x (N, Ci, H, W), w (Co, Ci, k, k)."""
    n, ci, h, wd = x.shape
    k = w.shape[-1]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (h + 2 * pad - k) // stride + 1
    ow = (wd + 2 * pad - k) // stride + 1
    out = np.zeros((n, w.shape[0], oh, ow))
    for i, j in itertools.product(range(k), range(k)):
        patch = xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
        out += np.einsum('nchw,oc->nohw', patch, w[:, :, i, j])
    return out


def naive_split_attention(x, p, channels, radix, cardinality, stride):
    """Cardinality-major computation written from the paper, one cardinal group at a time."""
    K, R, C = cardinality, radix, channels
    G = K * R
    cin = x.shape[1] // G            # input channels of one feature-map group
    w = C // K                        # channels of one cardinal group
    inter = p['fc1_weight'].shape[0] // K
    outputs = []
    for k in range(K):
        # U_{R(k-1)+i} = F_i(X): in the radix-major conv, split r of cardinal group k is group
        # g = r*K + k of the grouped convolution, and so are its BatchNorm channels.
        splits = []
        for r in range(R):
            g = r * K + k
            oc = slice(g * w, (g + 1) * w)
            u = _conv2d(x[:, g * cin:(g + 1) * cin], p['conv_weight'][oc], stride, 1)
            u = _bn(u, p['bn_gamma'][oc], p['bn_beta'][oc], p['bn_running_mean'][oc],
                    p['bn_running_var'][oc])
            splits.append(np.maximum(u, 0))
        u_hat = sum(splits)                                        # fuse the splits
        s = u_hat.mean(axis=(2, 3))                                # eq. (1)
        ic = slice(k * inter, (k + 1) * inter)
        h = s @ p['fc1_weight'][ic, :, 0, 0].T + p['fc1_bias'][ic]
        h = np.maximum(_bn(h, p['bn1_gamma'][ic], p['bn1_beta'][ic],
                           p['bn1_running_mean'][ic], p['bn1_running_var'][ic]), 0)
        oc2 = slice(k * R * w, (k + 1) * R * w)
        logits = h @ p['fc2_weight'][oc2, :, 0, 0].T + p['fc2_bias'][oc2]
        logits = logits.reshape(-1, R, w)                          # G_i^c(s^k)
        if R > 1:                                                  # eq. (3)
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            a = e / e.sum(axis=1, keepdims=True)
        else:
            a = 1 / (1 + np.exp(-logits))
        v = sum(a[:, i, :, None, None] * splits[i] for i in range(R))  # eq. (2)
        outputs.append(v)
    return np.concatenate(outputs, axis=1)                         # V = Concat{V^k}


def _native_or_skip() -> None:
    from gluon_resnest import native

    try:
        native.load(required=True)
    except native.NativeBuildError as err:
        pytest.skip(f'the native operator library is unavailable here: {err}')


@pytest.mark.parametrize('radix,cardinality,stride,native',
                         [(r, k, s, False) for r, k, s in
                          itertools.product([1, 2, 4], [1, 2, 4], [1, 2])] +
                         [(r, k, 1, True) for r, k in itertools.product([2, 4], [1, 2])])
def test_split_attention_matches_paper(radix, cardinality, stride, native):
    """MXNet's operators and, with ``native``, the native Split-Attention operators."""
    if native:
        _native_or_skip()
    channels = 8 * cardinality
    in_channels = 8 * radix * cardinality
    block = SplitAttention(channels, 3, stride, 1, radix=radix, cardinality=cardinality,
                           in_channels=in_channels, native=native)
    block.initialize(mx.init.Normal(0.3))
    randomize_norm_stats(block, seed=radix * 10 + cardinality)
    for name, param in block.collect_params().items():
        if name.endswith('bias'):
            param.set_data(mx.nd.random.uniform(-0.5, 0.5, shape=param.shape))
    x = np.random.uniform(-1, 1, (2, in_channels, 9, 9))
    params = {k.replace('.', '_'): v.data().asnumpy().astype(np.float64)
              for k, v in block._collect_params_with_prefix().items()}
    expected = naive_split_attention(x, params, channels, radix, cardinality, stride)
    for hybrid in (False, True):
        block.hybridize(hybrid)
        actual = block(mx.nd.array(x)).asnumpy()
        assert actual.shape == expected.shape
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


def test_attention_width_rule():
    assert attention_channels(64, 2) == 32
    assert attention_channels(256, 2) == 128
    assert attention_channels(40, 4) == 40
    assert attention_channels(16, 1) == 32
