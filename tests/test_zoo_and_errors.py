"""model_zoo.get_model's GluonCV signature, pretrained files, and clear errors for bad input."""
from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest

import gluon_resnest
from conftest import randomize_norm_stats


def _saved(name: str, path, **kwargs):
    net = gluon_resnest.get_model(name, **kwargs)
    net.initialize(mx.init.Xavier())
    randomize_norm_stats(net)
    net.save_parameters(str(path))
    return net


def test_get_model_is_the_zoo_function():
    assert gluon_resnest.get_model is gluon_resnest.model_zoo.get_model


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match=r"unknown model 'resnest51'.*Did you mean: .*resnest50"):
        gluon_resnest.get_model('resnest51')


def test_names_are_case_insensitive():
    assert gluon_resnest.get_model('ResNeSt14').model_name == 'resnest14'


def test_pretrained_path_and_root(tmp_path):
    ref = _saved('resnest14', tmp_path / 'resnest14.params', classes=5)
    x = mx.nd.random.uniform(shape=(1, 3, 64, 64))
    by_path = gluon_resnest.get_model('resnest14', pretrained=str(tmp_path / 'resnest14.params'),
                                      classes=5, ctx=mx.cpu())
    by_root = gluon_resnest.get_model('resnest14', pretrained=True, root=str(tmp_path), classes=5)
    np.testing.assert_array_equal(by_path(x).asnumpy(), ref(x).asnumpy())
    np.testing.assert_array_equal(by_root(x).asnumpy(), ref(x).asnumpy())


def test_pretrained_missing_file_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match='no parameter file'):
        gluon_resnest.get_model('resnest14', pretrained=str(tmp_path / 'resnest14.params'))
    # Not cached and not downloadable (conftest's closed loopback port): the URL and the path.
    with pytest.raises(FileNotFoundError, match=r'cannot fetch http://127\.0\.0\.1:\d+/.*put '
                                                r'the unzipped file \(sha1 7e0b0cae\w+\) at \('
                                                + str(tmp_path) + r'/resnest14-7e0b0cae\.params\)'):
        gluon_resnest.get_model('resnest14', pretrained=True, root=str(tmp_path))


def test_params_of_another_architecture_name_the_parameter(tmp_path):
    _saved('resnest26', tmp_path / 'r26.params')
    with pytest.raises(ValueError, match=r"does not fit resnest14: the file has parameter "
                                         r"'layer1\.1\.conv1\.weight'"):
        gluon_resnest.get_model('resnest14', pretrained=str(tmp_path / 'r26.params'))
    _saved('resnest101', tmp_path / 'r101.params')
    with pytest.raises(ValueError, match=r"parameter 'conv1\.0\.weight' has shape "
                                         r"\(64, 3, 3, 3\) in the file but \(32, 3, 3, 3\)"):
        gluon_resnest.get_model('resnest50', pretrained=str(tmp_path / 'r101.params'))
    _saved('resnest14', tmp_path / 'r14.params')
    with pytest.raises(ValueError, match=r"it has no parameter 'layer1\.1\.conv1\.weight'"):
        gluon_resnest.get_model('resnest26', pretrained=str(tmp_path / 'r14.params'))


def test_not_a_params_file(tmp_path):
    bad = tmp_path / 'bad.params'
    bad.write_bytes(b'this is not an MXNet file')
    with pytest.raises(ValueError, match='is not an MXNet parameter file'):
        gluon_resnest.get_model('resnest14', pretrained=str(bad))


@pytest.mark.parametrize('hybridize', [False, True])
def test_wrong_input_channels(hybridize):
    net = gluon_resnest.get_model('resnest14')
    net.initialize()
    if hybridize:
        net.hybridize()
    with pytest.raises(ValueError, match=r'expects a batch of images shaped \(N, 3, H, W\), '
                                         r'got an array of shape \(1, 1, 32, 32\)'):
        net(mx.nd.zeros((1, 1, 32, 32)))
    with pytest.raises(ValueError, match='got an array of shape'):
        net(mx.nd.zeros((3, 32, 32)))


def test_bad_architecture_arguments():
    with pytest.raises(ValueError, match='output_stride'):
        gluon_resnest.get_model('resnest50', output_stride=4)
    with pytest.raises(ValueError, match='drop probability'):
        gluon_resnest.get_model('resnest50', dropblock_prob=1.5)
    with pytest.raises(TypeError):
        gluon_resnest.get_model('resnest50', no_such_option=1)
