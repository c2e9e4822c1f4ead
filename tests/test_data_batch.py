"""Label smoothing and mixup targets."""
from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest

from gluon_resnest.data import mixup, smooth_one_hot


def test_smooth_one_hot_values():
    targets = smooth_one_hot(mx.nd.array([2, 0, 4], dtype='float32'), 5, 0.1).asnumpy()
    assert targets.dtype == np.float32 and targets.shape == (3, 5)
    expected = np.full((3, 5), 0.02, np.float32)
    expected[[0, 1, 2], [2, 0, 4]] = 0.92
    np.testing.assert_allclose(targets, expected, rtol=0, atol=1e-7)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(smooth_one_hot(mx.nd.array([1]), 3, 0.0).asnumpy(), [[0, 1, 0]])
    with pytest.raises(ValueError):
        smooth_one_hot(mx.nd.array([1]), 3, 1.0)


def test_mixup_pairs_each_sample_with_the_reversed_batch():
    data = mx.nd.array(np.arange(4 * 2 * 3, dtype=np.float32).reshape(4, 2, 3))
    targets = smooth_one_hot(mx.nd.array([0, 1, 2, 3]), 4, 0.0)
    lam = np.random.RandomState(7).beta(0.2, 0.2)
    mixed, mixed_t = mixup(data, targets, 0.2, np.random.RandomState(7))
    x, t = data.asnumpy(), targets.asnumpy()
    np.testing.assert_allclose(mixed.asnumpy(), lam * x + (1 - lam) * x[::-1], rtol=1e-6)
    np.testing.assert_allclose(mixed_t.asnumpy(), lam * t + (1 - lam) * t[::-1], atol=1e-6)
    # sample 0 holds lam of class 0 and 1 - lam of class 3 (its partner in the reversed batch)
    np.testing.assert_allclose(mixed_t.asnumpy()[0], [lam, 0, 0, 1 - lam], atol=1e-6)
    np.testing.assert_allclose(mixed_t.asnumpy().sum(axis=1), 1.0, atol=1e-6)


def test_mixup_lambda_follows_beta_and_generator_api():
    rng = np.random.default_rng(0)
    data = mx.nd.array([[1.0], [0.0]])
    targets = mx.nd.array([[1.0, 0.0], [0.0, 1.0]])
    lams = [float(mixup(data, targets, 0.2, rng)[0].asnumpy()[0, 0]) for _ in range(2000)]
    # Beta(0.2, 0.2): mean 0.5, variance 1 / (4 * 1.4) ~ 0.179, mostly near 0 or 1
    assert abs(np.mean(lams) - 0.5) < 0.05
    assert abs(np.var(lams) - 1 / 5.6) < 0.02
    same_d, same_t = mixup(data, targets, 0.0, rng)
    assert same_d is data and same_t is targets
