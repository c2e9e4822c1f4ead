"""tools/export_onnx.py: real ONNX files run by onnxruntime, compared with MXNet."""
from __future__ import annotations

import json

import mxnet as mx
import numpy as np
import onnx
import onnxruntime
import pytest
from tools_cli import load_tool, run_tool, tame_residual_branches

from conftest import randomize_norm_stats
from gluon_resnest import get_model, list_models
from gluon_resnest.deploy import export_network, export_onnx, load_exported

TOL = 1e-4


def session(path) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def max_error(prefix, onnx_file, data: np.ndarray) -> tuple[float, float]:
    net, _ = load_exported(str(prefix))
    expected = net(mx.nd.array(data)).asnumpy()
    sess = session(onnx_file)
    actual = sess.run(None, {sess.get_inputs()[0].name: data})[0]
    assert actual.shape == expected.shape
    return float(np.abs(actual - expected).max()), float(np.abs(expected).max())


def export_model(name, folder, size, classes=10, preprocess=False, seed=0):
    net = get_model(name, classes=classes)
    net.initialize()
    randomize_norm_stats(net, seed)
    tame_residual_branches(net, seed)
    prefix = str(folder / name)
    export_network(net, prefix, input_size=size, preprocess=preprocess)
    return prefix


def test_cli_onnx_matches_mxnet_with_dynamic_batch(tmp_path):
    prefix = export_model('resnest14', tmp_path, 64, preprocess=True)
    out = tmp_path / 'onnx' / 'resnest14.onnx'
    result = run_tool('export_onnx', '--prefix', prefix, '--output', out, '--verify')
    assert result.returncode == 0, result.stderr
    assert 'max abs difference' in result.stdout
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].HasField('dim_value')  # dynamic batch
    assert [d.dim_value for d in dims[1:]] == [3, 64, 64]
    meta = json.loads({p.key: p.value for p in model.metadata_props}['gluon_resnest'])
    assert meta['preprocess'] is True and meta['input_size'] == 64
    rng = np.random.RandomState(0)
    for batch in (1, 3):
        data = rng.uniform(0, 255, (batch, 3, 64, 64)).astype(np.float32)
        err, scale = max_error(prefix, out, data)
        assert err <= TOL * max(scale, 1.0), (batch, err, scale)


def ort_warnings(path, capfd) -> list[str]:
    """onnxruntime's warnings (its log at warning level, on stderr) when it loads ``path``."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 2  # warnings and above
    capfd.readouterr()
    onnxruntime.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    return [line for line in capfd.readouterr().err.splitlines() if '[W:onnxruntime' in line]


def test_weights_are_initializers_only(tmp_path, capfd):
    prefix = export_model('resnest14', tmp_path, 64)
    out = export_onnx(prefix, str(tmp_path / 'clean.onnx'))
    model = onnx.load(out)
    weights = {tensor.name for tensor in model.graph.initializer}
    assert [value.name for value in model.graph.input] == ['data']
    read = {name for node in model.graph.node for name in node.input}
    assert weights and weights <= read  # every initializer feeds a node
    assert ort_warnings(out, capfd) == []
    # The same graph with its weights listed as inputs too (how MXNet's exporter writes it):
    # onnxruntime warns for each, which shows the capture above would have seen it.
    for tensor in model.graph.initializer:
        model.graph.input.append(onnx.helper.make_tensor_value_info(
            tensor.name, tensor.data_type, list(tensor.dims)))
    onnx.save(model, str(tmp_path / 'inputs.onnx'))
    warned = ort_warnings(tmp_path / 'inputs.onnx', capfd)
    assert len([w for w in warned if 'will not be treated as constant' in w]) == len(weights)


@pytest.mark.parametrize('name', ['resnest50_fast_4s2x40d', 'resnest50_fast_1s4x24d'])
def test_block_variants_match_mxnet(tmp_path, name):
    """Radix 4 x cardinality 2, radix 1 (sigmoid gate) x cardinality 4 (radix 0: slow test)."""
    prefix = export_model(name, tmp_path, 64)
    out = export_onnx(prefix, str(tmp_path / f'{name}.onnx'))
    data = np.random.RandomState(1).randn(2, 3, 64, 64).astype(np.float32)
    err, scale = max_error(prefix, out, data)
    assert err <= TOL * max(scale, 1.0), (err, scale)


def test_errors(tmp_path, capsys):
    tool = load_tool('export_onnx')
    assert tool.main(['--prefix', str(tmp_path / 'none'), '--output',
                      str(tmp_path / 'x.onnx')]) == 2
    assert 'no exported symbol file' in capsys.readouterr().err
    (tmp_path / 'bad-symbol.json').write_text('{"nodes": 3}')
    (tmp_path / 'bad-0000.params').write_bytes(b'not params')
    (tmp_path / 'bad-meta.json').write_text('{}')  # no checksums: the files themselves fail
    assert tool.main(['--prefix', str(tmp_path / 'bad'), '--output',
                      str(tmp_path / 'x.onnx')]) == 2
    assert "bad-symbol.json' is not an MXNet symbol file" in capsys.readouterr().err
    assert not (tmp_path / 'x.onnx').exists()


def test_help():
    result = run_tool('export_onnx', '--help')
    assert result.returncode == 0 and '--output' in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize('name', list_models())
def test_zoo_onnx_matches_mxnet(tmp_path, name):
    """Every registered model at 224x224, 1000 classes, batch 2: onnxruntime equals MXNet."""
    prefix = export_model(name, tmp_path, 224, classes=1000, seed=1)
    out = export_onnx(prefix, str(tmp_path / f'{name}.onnx'))
    assert [value.name for value in onnx.load(out).graph.input] == ['data']
    data = np.random.RandomState(2).randn(2, 3, 224, 224).astype(np.float32)
    err, scale = max_error(prefix, out, data)
    print(f'{name}: max abs error {err:.3g}, largest output {scale:.3g}')
    assert err <= TOL * max(scale, 1.0), (err, scale)
