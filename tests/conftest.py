"""Shared fixtures and helpers for the test-suite."""
from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seed():
    mx.random.seed(0)
    np.random.seed(0)


def randomize_norm_stats(net: mx.gluon.Block, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial gamma/beta/running stats, so inference is not a no-op."""
    rng = np.random.RandomState(seed)
    for name, param in net.collect_params().items():
        if name.endswith(('gamma', 'running_var')):
            param.set_data(mx.nd.array(rng.uniform(0.5, 1.5, param.shape)))
        elif name.endswith(('beta', 'running_mean')):
            param.set_data(mx.nd.array(rng.uniform(-0.2, 0.2, param.shape)))


def assert_close_to_largest(actual: np.ndarray, expected: np.ndarray, tol: float = 1e-4) -> None:
    """Every element within ``tol`` times the largest magnitude of ``expected``."""
    scale = max(float(np.abs(expected).max()), 1e-12)
    err = float(np.abs(actual - expected).max())
    assert err <= tol * scale, f'max abs error {err:.3g} > {tol} * {scale:.3g}'
