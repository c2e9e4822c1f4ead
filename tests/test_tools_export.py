"""tools/export.py and gluon_resnest.deploy: real exports, reloaded by SymbolBlock and Module."""
from __future__ import annotations

import json

import mxnet as mx
import numpy as np
import pytest
from plain_mxnet import load_with_plain_mxnet
from tools_cli import load_tool, run_tool

from conftest import assert_close_to_largest, randomize_norm_stats
from gluon_resnest import get_model
from gluon_resnest.deploy import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    export_network,
    load_exported,
    read_meta,
)

SIZE = 64


def normalise(raw: np.ndarray) -> np.ndarray:
    mean = np.asarray(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1)
    return (raw - mean) / std


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A resnest14 (10 classes) with non-trivial BatchNorm statistics, saved to .params."""
    folder = tmp_path_factory.mktemp('export')
    net = get_model('resnest14', classes=10)
    net.initialize()
    randomize_norm_stats(net, seed=3)
    params = folder / 'resnest14.params'
    net.save_parameters(str(params))
    raw = np.random.RandomState(0).uniform(0, 255, (2, 3, SIZE, SIZE)).astype(np.float32)
    expected = net(mx.nd.array(normalise(raw))).asnumpy()
    return {'folder': folder, 'params': params, 'raw': raw, 'expected': expected}


@pytest.fixture(scope='module')
def exported(trained):
    """tools/export.py run as a real subprocess, without and with --preprocess."""
    out = {}
    for preprocess in (False, True):
        prefix = trained['folder'] / ('pre' if preprocess else 'plain') / 'resnest14'
        args = ['--model', 'resnest14', '--params', trained['params'], '--input-size', SIZE,
                '--prefix', prefix] + (['--preprocess'] if preprocess else [])
        result = run_tool('export', *args)
        assert result.returncode == 0, result.stderr
        out[preprocess] = prefix
    return out


def test_export_writes_symbol_params_and_meta(exported):
    prefix = exported[False]
    assert (prefix.parent / 'resnest14-symbol.json').is_file()
    assert (prefix.parent / 'resnest14-0000.params').is_file()
    meta = read_meta(str(prefix))
    assert meta['model'] == 'resnest14' and meta['input_size'] == SIZE
    assert meta['classes'] == 10 and meta['preprocess'] is False
    assert read_meta(str(exported[True]))['preprocess'] is True


def test_symbolblock_matches_gluon(trained, exported):
    net, _ = load_exported(str(exported[False]))
    actual = net(mx.nd.array(normalise(trained['raw']))).asnumpy()
    assert_close_to_largest(actual, trained['expected'], 1e-5)
    # the plain mx.gluon API reads the same files
    direct = mx.gluon.SymbolBlock.imports(f'{exported[False]}-symbol.json', ['data'],
                                          f'{exported[False]}-0000.params')
    assert_close_to_largest(direct(mx.nd.array(normalise(trained['raw']))).asnumpy(),
                            trained['expected'], 1e-5)


def test_preprocessed_export_takes_0_255_input(trained, exported):
    net, meta = load_exported(str(exported[True]))
    assert meta['preprocess']
    actual = net(mx.nd.array(trained['raw'])).asnumpy()
    assert_close_to_largest(actual, trained['expected'], 1e-5)


def test_module_api_matches_gluon(trained, exported):
    for preprocess, prefix in exported.items():
        sym, arg_params, aux_params = mx.model.load_checkpoint(str(prefix), 0)
        mod = mx.mod.Module(sym, data_names=['data'], label_names=None, context=mx.cpu())
        mod.bind(data_shapes=[('data', (2, 3, SIZE, SIZE))], for_training=False)
        mod.set_params(arg_params, aux_params)
        data = trained['raw'] if preprocess else normalise(trained['raw'])
        mod.forward(mx.io.DataBatch([mx.nd.array(data)]), is_train=False)
        assert_close_to_largest(mod.get_outputs()[0].asnumpy(), trained['expected'], 1e-5)


def test_default_export_loads_without_gluon_resnest(trained, exported, tmp_path):
    """The default export needs nothing but MXNet: SymbolBlock.imports and Module, in a process
    that never imports gluon_resnest, give the network's outputs."""
    assert read_meta(str(exported[False]))['native_operators'] == []
    gluon_out, module_out = load_with_plain_mxnet(str(exported[False]),
                                                  normalise(trained['raw']), str(tmp_path))
    assert_close_to_largest(gluon_out, trained['expected'], 1e-5)
    assert_close_to_largest(module_out, trained['expected'], 1e-5)


def test_export_runs_at_other_input_sizes(trained, exported):
    net, _ = load_exported(str(exported[False]))
    gluon = get_model('resnest14', pretrained=str(trained['params']), classes=10)
    data = mx.nd.array(np.random.RandomState(4).randn(1, 3, 96, 80).astype(np.float32))
    assert_close_to_largest(net(data).asnumpy(), gluon(data).asnumpy(), 1e-5)


def test_export_network_disables_dropblock_and_writes_class_names(tmp_path):
    net = get_model('resnest14', classes=3, dropblock_prob=0.1)
    net.initialize()
    sym_file, params_file = export_network(net, str(tmp_path / 'db'), input_size=SIZE,
                                           classes=['cat', 'dog', 'emu'])
    ops = {node['op'] for node in json.loads(open(sym_file).read())['nodes']}
    assert not any('random' in op or op == 'Dropout' for op in ops), ops
    assert all(b.drop_prob == 0 for b in _dropblocks(net))
    assert (tmp_path / 'db.classes').read_text().split() == ['cat', 'dog', 'emu']
    meta = read_meta(str(tmp_path / 'db'))
    assert meta['classes'] == 3 and meta['class_names'] == 'db.classes'
    loaded, _ = load_exported(str(tmp_path / 'db'))
    data = mx.nd.array(np.random.RandomState(5).randn(2, 3, SIZE, SIZE))
    assert_close_to_largest(loaded(data).asnumpy(), net(data).asnumpy(), 1e-5)


def _dropblocks(net):
    from gluon_resnest.layers import DropBlock

    found = []
    net.apply(lambda b: found.append(b) if isinstance(b, DropBlock) else None)
    assert found
    return found


def test_export_without_params_says_so(tmp_path):
    export = load_tool('export')
    prefix = tmp_path / 'fresh'
    result = run_tool('export', '--model', 'resnest14', '--classes', '4', '--input-size', '32',
                      '--prefix', prefix, '--epoch', '7')
    assert result.returncode == 0, result.stderr
    assert 'freshly initialised' in result.stderr
    assert (tmp_path / 'fresh-0007.params').is_file()
    assert export.main(['--model', 'resnest14', '--classes', '4', '--input-size', '32',
                        '--prefix', str(prefix), '--epoch', '8']) == 0
    assert load_exported(str(prefix), epoch=8)[1]['epoch'] == 8


def test_errors(trained, tmp_path, capsys):
    export = load_tool('export')
    out = str(tmp_path / 'x')
    assert export.main(['--model', 'resnest14', '--params', str(tmp_path / 'missing.params'),
                        '--prefix', out]) == 2
    assert 'no parameter file at' in capsys.readouterr().err
    assert export.main(['--model', 'resnest15', '--prefix', out]) == 2
    assert "unknown model 'resnest15'. Did you mean" in capsys.readouterr().err
    # a checkpoint of another architecture: the message names the parameter
    assert export.main(['--model', 'resnest26', '--params', str(trained['params']),
                        '--prefix', out]) == 2
    err = capsys.readouterr().err
    assert 'does not fit resnest26' in err and "'layer1.1." in err
    with pytest.raises(FileNotFoundError, match='no exported symbol file'):
        load_exported(str(tmp_path / 'nothing'))
    assert not list(tmp_path.glob('x-*'))


def test_load_exported_names_missing_epoch(exported):
    with pytest.raises(FileNotFoundError, match=r'epochs available: \[0\]'):
        load_exported(str(exported[False]), epoch=3)


def test_help():
    result = run_tool('export', '--help')
    assert result.returncode == 0 and '--preprocess' in result.stdout
