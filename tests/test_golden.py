"""Golden values: parameter counts (``model_info``, the paper's table) and parameter names
(golden files: the checkpoint format)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import gluon_resnest
from gluon_resnest.models import MODEL_INFO

GOLDEN = Path(__file__).parent / 'golden'


def _trainable(net):
    return {k: p for k, p in net._collect_params_with_prefix().items() if p.grad_req != 'null'}


def test_every_model_has_a_golden_count():
    assert sorted(MODEL_INFO) == gluon_resnest.list_models()


@pytest.mark.parametrize('name', sorted(MODEL_INFO))
def test_param_count(name):
    net = gluon_resnest.get_model(name)
    count = sum(int(np.prod(p.shape)) for p in _trainable(net).values())
    assert count == gluon_resnest.model_info(name)['params']


@pytest.mark.parametrize('name', ['resnest14', 'resnest50_fast_1s2x40d', 'resnetd50'])
def test_param_names_and_shapes_are_stable(name):
    net = gluon_resnest.get_model(name)
    actual = {k: list(p.shape) for k, p in net._collect_params_with_prefix().items()}
    expected = json.loads((GOLDEN / f'params_{name}.json').read_text())
    assert actual == expected
