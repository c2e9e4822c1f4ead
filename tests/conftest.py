"""Shared fixtures and helpers for the test-suite."""
from __future__ import annotations

import socket

import mxnet as mx
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seed():
    mx.random.seed(0)
    np.random.seed(0)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


#: A loopback URL where nothing listens.
CLOSED_URL = f'http://127.0.0.1:{_closed_port()}/'


@pytest.fixture(autouse=True)
def _weights_offline(monkeypatch):
    """Published weights never come from the internet in tests: both stores point at a closed
    loopback port, unless a test serves them (tests/weights_store.py)."""
    monkeypatch.setenv('MXNET_GLUON_REPO', CLOSED_URL)
    monkeypatch.setenv('GLUON_RESNEST_REPO', CLOSED_URL)
    monkeypatch.delenv('ENCODING_REPO', raising=False)


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
