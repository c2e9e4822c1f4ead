"""tools/convert_torch.py: real checkpoints written by the authors' PyTorch ResNeSt.

The checkpoints and PyTorch's logits come from ``tests/tools_torch_reference.py`` run by the
torch virtualenv's interpreter (``GLUON_RESNEST_TORCH_PYTHON``, else ``<repo>/.torchvenv``).
"""
from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from tools_cli import load_tool, run_tool

from conftest import assert_close_to_largest
from gluon_resnest import get_model, list_models
from gluon_resnest.deploy.torch_checkpoint import (
    TIMM_MODEL_NAMES,
    convert_state_dict,
    load_torch_file,
    load_torch_state_dict,
    torch_to_gluon_name,
)
from gluon_resnest.models import ResNeSt

ROOT = Path(__file__).resolve().parents[1]
TORCH_PY = os.environ.get('GLUON_RESNEST_TORCH_PYTHON') or str(ROOT / '.torchvenv' / 'bin'
                                                                / 'python')
needs_torch = pytest.mark.skipif(
    not os.path.isfile(TORCH_PY),
    reason=f'no PyTorch interpreter at {TORCH_PY} (set GLUON_RESNEST_TORCH_PYTHON or run '
           f'`make torch-env`)')

# Small variants of the authors' ResNet covering every block type at 64x64: radix 2 (the
# registered resnest14), radix 4 with cardinality 2 and avd first, radix 1 (sigmoid gate) with
# cardinality 4, radix 0 (ResNet-D bottleneck).
SMALL_ARCHS = {
    'r2': dict(layers=[1, 1, 1, 1]),
    'r4c2': dict(layers=[1, 1, 1, 1], radix=4, groups=2, bottleneck_width=40, avd_first=True),
    'r1c4': dict(layers=[1, 1, 1, 1], radix=1, groups=4, bottleneck_width=24, avd_first=True),
    'r0': dict(layers=[1, 1, 1, 1], radix=0, avd_first=True),
}


def ours(arch: dict, classes: int = 10) -> ResNeSt:
    """Our network with the same configuration as the authors' ``ResNet(**arch)``."""
    arch = dict(arch)
    return ResNeSt(layers=arch.pop('layers'), classes=classes, radix=arch.get('radix', 2),
                   cardinality=arch.get('groups', 1),
                   bottleneck_width=arch.get('bottleneck_width', 64),
                   stem_width=arch.get('stem_width', 32), avd_first=arch.get('avd_first', False))


def run_torch(cases: list[dict], folder: Path) -> None:
    spec = folder / 'spec.json'
    spec.write_text(json.dumps(cases))
    subprocess.run([TORCH_PY, str(ROOT / 'tests' / 'tools_torch_reference.py'), str(spec)],
                   check=True, cwd=ROOT, timeout=900)


def forward(net: mx.gluon.HybridBlock, data: np.ndarray) -> np.ndarray:
    net.hybridize()
    return net(mx.nd.array(data)).asnumpy()


@pytest.fixture(scope='module')
def torch_files(tmp_path_factory) -> dict:
    """Checkpoints (zip, legacy, timm container, safetensors) and logits for SMALL_ARCHS."""
    if not os.path.isfile(TORCH_PY):
        pytest.skip(f'no PyTorch interpreter at {TORCH_PY}')
    folder = tmp_path_factory.mktemp('torch')
    data = np.random.RandomState(1).randn(2, 3, 64, 64).astype(np.float32)
    np.save(folder / 'x.npy', data)
    cases, out = [], {'data': data, 'folder': folder}
    for seed, (key, arch) in enumerate(SMALL_ARCHS.items()):
        files = {'zip': str(folder / f'{key}.pth')}
        if key == 'r2':
            files.update(legacy=str(folder / 'r2_legacy.pth'), timm=str(folder / 'r2_timm.pth'),
                         safetensors=str(folder / 'r2.safetensors'))
        cases.append({'arch': arch, 'classes': 10, 'seed': seed, 'input': str(folder / 'x.npy'),
                      'logits': str(folder / f'{key}_logits.npy'), 'files': files,
                      'timm_arch': 'resnest14d'})
        out[key] = {'files': files, 'logits': str(folder / f'{key}_logits.npy')}
    run_torch(cases, folder)
    return out


@needs_torch
def test_cli_converts_authors_checkpoint(torch_files, tmp_path):
    """The real tool, as a subprocess, on a real torch.save file; logits equal PyTorch's."""
    case = torch_files['r2']
    assert zipfile.is_zipfile(case['files']['zip'])  # torch >= 1.6 format
    out = tmp_path / 'resnest14.params'
    result = run_tool('convert_torch', '--model', 'resnest14', '--input', case['files']['zip'],
                      '--output', out)
    assert result.returncode == 0, result.stderr
    assert 'resnest14 with 10 classes' in result.stdout
    net = get_model('resnest14', pretrained=str(out), classes=10)
    expected = np.load(case['logits'])
    assert_close_to_largest(forward(net, torch_files['data']), expected, 1e-4)


@needs_torch
@pytest.mark.parametrize('key', sorted(SMALL_ARCHS))
def test_every_block_type_matches_pytorch(torch_files, key):
    case = torch_files[key]
    net = ours(SMALL_ARCHS[key])
    converted = convert_state_dict(load_torch_state_dict(case['files']['zip']), net, key)
    net.initialize()
    for name, param in net._collect_params_with_prefix().items():
        param.set_data(mx.nd.array(converted[name]))
    assert_close_to_largest(forward(net, torch_files['data']), np.load(case['logits']), 1e-4)


@needs_torch
@pytest.mark.parametrize('variant', ['legacy', 'timm', 'timm-ema', 'safetensors'])
def test_other_checkpoint_formats(torch_files, tmp_path, variant):
    """Legacy torch.save, timm's training container (plain and EMA entry), safetensors."""
    case = torch_files['r2']
    file = case['files']['timm' if variant.startswith('timm') else variant]
    argv = ['--model', 'resnest14d' if variant.startswith('timm') else 'resnest14',
            '--input', file, '--output', str(tmp_path / 'out.params')]
    if variant == 'timm-ema':
        argv += ['--key', 'state_dict_ema']
    convert_torch = load_tool('convert_torch')
    assert convert_torch.main(argv) == 0
    net = get_model('resnest14', pretrained=str(tmp_path / 'out.params'), classes=10)
    assert_close_to_largest(forward(net, torch_files['data']), np.load(case['logits']), 1e-4)


@needs_torch
def test_restricted_unpickler_keeps_foreign_objects_inert(torch_files):
    loaded = load_torch_file(torch_files['r2']['files']['timm'])
    assert loaded['epoch'] == 3 and loaded['arch'] == 'resnest14d'
    assert type(loaded['args']).__name__ == 'Opaque'  # argparse.Namespace, never built
    assert loaded['args'].qualname == 'argparse.Namespace'
    assert isinstance(loaded['state_dict']['fc.weight'], np.ndarray)
    assert loaded['state_dict']['bn1.num_batches_tracked'] == 1234


@needs_torch
def test_checkpoint_of_another_architecture_names_the_tensor(torch_files, tmp_path):
    """A radix-4 checkpoint given as resnest14 (radix 2): the error names the tensor."""
    result = run_tool('convert_torch', '--model', 'resnest14', '--input',
                      torch_files['r4c2']['files']['zip'], '--output', tmp_path / 'x.params')
    assert result.returncode == 2
    assert "tensor 'layer1.0.conv1.weight' has shape (80, 64, 1, 1)" in result.stderr
    assert "our parameter 'layer1.0.conv1.weight' has shape (64, 64, 1, 1)" in result.stderr
    assert not (tmp_path / 'x.params').exists()


@needs_torch
def test_checkpoint_with_missing_tensor_names_it(torch_files, tmp_path):
    """A ResNet-D (radix 0) checkpoint has no Split-Attention tensors."""
    net = get_model('resnest14', classes=10)
    state = load_torch_state_dict(torch_files['r0']['files']['zip'])
    with pytest.raises(ValueError, match=r"no tensor for our parameter "
                                         r"'layer1\.0\.conv2\.conv\.weight'"):
        convert_state_dict(state, net, 'r0.pth')


def test_name_mapping():
    norms = {'bn1', 'conv1.1', 'layer1.0.conv2.bn0', 'layer1.0.conv2.bn1',
             'layer1.0.downsample.2'}
    assert torch_to_gluon_name('conv1.0.weight', norms) == 'conv1.0.weight'
    assert torch_to_gluon_name('conv1.1.weight', norms) == 'conv1.1.gamma'
    assert torch_to_gluon_name('bn1.bias', norms) == 'bn1.beta'
    assert torch_to_gluon_name('bn1.running_var', norms) == 'bn1.running_var'
    assert torch_to_gluon_name('bn1.num_batches_tracked', norms) is None
    assert torch_to_gluon_name('layer1.0.conv2.bn0.weight', norms) == 'layer1.0.conv2.bn.gamma'
    assert torch_to_gluon_name('layer1.0.conv2.bn1.bias', norms) == 'layer1.0.conv2.bn1.beta'
    assert torch_to_gluon_name('layer1.0.conv2.fc1.bias', norms) == 'layer1.0.conv2.fc1.bias'
    assert torch_to_gluon_name('layer1.0.downsample.2.weight', norms) == \
        'layer1.0.downsample.2.gamma'
    assert torch_to_gluon_name('fc.weight', norms) == 'fc.weight'
    assert set(TIMM_MODEL_NAMES.values()) <= set(list_models())


def test_errors_for_missing_file_wrong_model_and_non_checkpoint(tmp_path):
    convert_torch = load_tool('convert_torch')
    out = str(tmp_path / 'o.params')
    assert convert_torch.main(['--model', 'resnest14', '--input', str(tmp_path / 'no.pth'),
                               '--output', out]) == 2
    bogus = tmp_path / 'bogus.pth'
    bogus.write_bytes(b'\x80\x02}q\x00.' + b'garbage')  # a pickle, but not torch's
    assert convert_torch.main(['--model', 'resnest14', '--input', str(bogus),
                               '--output', out]) == 2
    text = tmp_path / 'text.pth'
    text.write_text('hello')
    assert convert_torch.main(['--model', 'resnest14', '--input', str(text),
                               '--output', out]) == 2
    assert convert_torch.main(['--model', 'resnest15', '--input', str(text),
                               '--output', out]) == 2
    assert not os.path.exists(out)


def test_error_messages(tmp_path, capsys):
    convert_torch = load_tool('convert_torch')
    convert_torch.main(['--model', 'resnest15', '--input', 'x.pth', '--output', 'y'])
    assert "unknown model 'resnest15'" in capsys.readouterr().err
    convert_torch.main(['--model', 'resnest14', '--input', str(tmp_path / 'no.pth'),
                        '--output', 'y'])
    assert 'no checkpoint file at' in capsys.readouterr().err
    text = tmp_path / 'text.pth'
    text.write_text('hello')
    convert_torch.main(['--model', 'resnest14', '--input', str(text), '--output', 'y'])
    assert 'is not a PyTorch checkpoint' in capsys.readouterr().err


def test_help():
    result = run_tool('convert_torch', '--help')
    assert result.returncode == 0 and '--input' in result.stdout


AUTHORS_ZOO = ['resnest50', 'resnest101', 'resnest200', 'resnest269', 'resnest50_fast_1s1x64d',
               'resnest50_fast_2s1x64d', 'resnest50_fast_4s1x64d', 'resnest50_fast_1s2x40d',
               'resnest50_fast_2s2x40d', 'resnest50_fast_4s2x40d', 'resnest50_fast_1s4x24d']
# Registered here but not in the authors' package: built from their ResNet class.
AUTHORS_ARCH = {
    'resnest14': dict(layers=[1, 1, 1, 1]),
    'resnest26': dict(layers=[2, 2, 2, 2]),
    'resnetd50': dict(layers=[3, 4, 6, 3], radix=0, avd_first=True),
}


@pytest.mark.slow
@needs_torch
@pytest.mark.parametrize('name', AUTHORS_ZOO + sorted(AUTHORS_ARCH))
def test_zoo_matches_pytorch(name, tmp_path):
    """Every registered model: the authors' PyTorch model, converted, gives the same logits."""
    data = np.random.RandomState(2).randn(2, 3, 64, 64).astype(np.float32)
    np.save(tmp_path / 'x.npy', data)
    case = {'factory': None if name in AUTHORS_ARCH else name, 'arch': AUTHORS_ARCH.get(name),
            'classes': 1000, 'seed': 3, 'input': str(tmp_path / 'x.npy'),
            'logits': str(tmp_path / 'logits.npy'), 'files': {'zip': str(tmp_path / 'm.pth')}}
    run_torch([case], tmp_path)
    convert_torch = load_tool('convert_torch')
    out = tmp_path / 'm.params'
    assert convert_torch.main(['--model', name, '--input', str(tmp_path / 'm.pth'),
                               '--output', str(out)]) == 0
    os.remove(tmp_path / 'm.pth')
    net = get_model(name, pretrained=str(out))
    actual, expected = forward(net, data), np.load(tmp_path / 'logits.npy')
    print(f'{name}: max abs error {np.abs(actual - expected).max():.3g}, '
          f'largest output {np.abs(expected).max():.3g}')
    assert_close_to_largest(actual, expected, 1e-4)


class _Creates:
    """Pickles to a call of ``open(path, 'w')``: would create the file if it were executed."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, 'w'))


@pytest.mark.parametrize('layout', ['zip', 'legacy'])
def test_malicious_pickle_runs_nothing(tmp_path, layout):
    import pickle

    marker = tmp_path / 'created-by-pickle'
    payload = pickle.dumps({'fc.weight': _Creates(str(marker))}, protocol=2)
    ckpt = tmp_path / 'evil.pth'
    if layout == 'zip':
        with zipfile.ZipFile(ckpt, 'w') as archive:
            archive.writestr('evil/data.pkl', payload)
    else:
        ckpt.write_bytes(pickle.dumps(_Creates(str(marker)), protocol=2) + payload)
    with pytest.raises(ValueError):
        load_torch_state_dict(str(ckpt))
    assert not marker.exists()
