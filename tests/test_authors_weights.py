"""The authors' Gluon models (``resnest.gluon`` of ``resnest==0.0.5``) save files that load into
ours with equal outputs: the eleven networks whose weights they publish.

Their network runs imperatively (their DropBlock is the identity at inference, at any size).
Random weights with random BatchNorm statistics make a deep residual stream grow until float32
rounding dominates; the small gamma on each bottleneck's last BatchNorm
(``tame_residual_branches``) keeps the outputs in a trained network's range, and the float64
run shows that what remains is rounding.
"""
from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest
from tools_cli import tame_residual_branches

import gluon_resnest
from conftest import randomize_norm_stats
from gluon_resnest import weights

authors = pytest.importorskip('resnest.gluon')

FAST = {'resnest50_fast_4s2x40d'}  # radix 4, cardinality 2; the others run in make test-slow
NAMES = sorted(authors.model_zoo.models)


def _relative(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def test_the_authors_publish_these_eleven():
    assert len(NAMES) == 11 and set(NAMES) <= set(weights.WEIGHTS)


@pytest.mark.parametrize('name', [n if n in FAST else pytest.param(n, marks=pytest.mark.slow)
                                  for n in NAMES])
def test_authors_file_loads_with_equal_outputs(name, tmp_path):
    theirs = authors.get_model(name)
    theirs.initialize(mx.init.Xavier(rnd_type='gaussian', factor_type='in', magnitude=2))
    x = mx.nd.random.uniform(-1, 1, shape=(2, 3, 64, 64))
    theirs(x)
    randomize_norm_stats(theirs)
    tame_residual_branches(theirs)
    path = str(tmp_path / f'{name}.params')
    theirs.save_parameters(path)
    ours = gluon_resnest.get_model(name, pretrained=path)  # every parameter, shapes checked
    ref = theirs(x).asnumpy()
    assert _relative(ours(x).asnumpy(), ref) <= 1e-5
    theirs.cast('float64')
    ours.cast('float64')
    x = x.astype('float64')
    assert _relative(ours(x).asnumpy(), theirs(x).asnumpy()) <= 1e-12
