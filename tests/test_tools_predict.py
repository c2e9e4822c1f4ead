"""tools/predict.py on real PNG/JPEG files, from an export and from model + parameters."""
from __future__ import annotations

import re

import mxnet as mx
import numpy as np
import pytest
from PIL import Image
from tools_cli import load_tool, run_tool

from conftest import randomize_norm_stats
from gluon_resnest import get_model
from gluon_resnest.deploy import eval_transform, export_network, load_image, resize_size

NAMES = [f'name{i}' for i in range(10)]


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp('predict')
    net = get_model('resnest14', classes=10)
    net.initialize()
    randomize_norm_stats(net, seed=5)
    net.save_parameters(str(folder / 'net.params'))
    export_network(net, str(folder / 'export' / 'net'), input_size=64, preprocess=True,
                   classes=NAMES)
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 256, (90, 120, 3), np.uint8)).save(folder / 'wide.png')
    Image.fromarray(rng.randint(0, 256, (100, 70), np.uint8)).save(folder / 'grey.jpg',
                                                                     quality=95)
    (folder / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 this is not a JPEG')
    return {'folder': folder, 'net': net}


def parse(stdout: str) -> dict[str, list[tuple[str, float]]]:
    """{image: [(label, probability), ...]} from predict's output."""
    out: dict[str, list] = {}
    current = None
    for line in stdout.splitlines():
        if line.endswith(':') and not line.startswith(' '):
            current = out.setdefault(line[:-1], [])
        else:
            match = re.match(r'\s+\d+\. (.+?)\s+([0-9.]+)$', line)
            assert match and current is not None, line
            current.append((match.group(1), float(match.group(2))))
    return out


def expected_top5(net, path: str, crop: int = 64) -> list[tuple[str, float]]:
    probs = mx.nd.softmax(net(eval_transform(load_image(path), crop))).asnumpy()[0]
    order = np.argsort(-probs, kind='stable')[:5]
    return [(NAMES[i], float(probs[i])) for i in order]


def test_predict_export_reports_unreadable_image_and_goes_on(files):
    folder = files['folder']
    result = run_tool('predict', '--prefix', folder / 'export' / 'net', folder / 'wide.png',
                      folder / 'broken.jpg', folder / 'grey.jpg', folder / 'missing.png')
    assert result.returncode == 1
    assert f"cannot read '{folder / 'broken.jpg'}' as an image" in result.stderr
    assert f"no image file at '{folder / 'missing.png'}'" in result.stderr
    got = parse(result.stdout)
    assert list(got) == [str(folder / 'wide.png'), str(folder / 'grey.jpg')]
    for image, top5 in got.items():
        want = expected_top5(files['net'], image)
        assert [label for label, _ in top5] == [label for label, _ in want]
        np.testing.assert_allclose([p for _, p in top5], [p for _, p in want], atol=1e-4)


def test_predict_model_and_params_equals_export(files, capsys):
    folder = files['folder']
    predict = load_tool('predict')
    classes = folder / 'names.txt'
    classes.write_text('\n'.join(NAMES) + '\n')
    assert predict.main(['--model', 'resnest14', '--params', str(folder / 'net.params'),
                         '--classes', str(classes), '--input-size', '64',
                         str(folder / 'wide.png')]) == 0
    from_params = parse(capsys.readouterr().out)
    assert predict.main(['--prefix', str(folder / 'export' / 'net'),
                         str(folder / 'wide.png')]) == 0
    from_export = parse(capsys.readouterr().out)
    assert [x[0] for x in from_params[str(folder / 'wide.png')]] == \
        [x[0] for x in from_export[str(folder / 'wide.png')]]
    np.testing.assert_allclose([x[1] for x in from_params[str(folder / 'wide.png')]],
                               [x[1] for x in from_export[str(folder / 'wide.png')]], atol=1e-4)


def test_errors(files, tmp_path, capsys):
    predict = load_tool('predict')
    image = str(files['folder'] / 'wide.png')
    assert predict.main(['--prefix', str(tmp_path / 'none'), image]) == 2
    assert 'no exported symbol file' in capsys.readouterr().err
    assert predict.main(['--model', 'resnest15', '--params', str(tmp_path / 'p'), image]) == 2
    assert predict.main(['--model', 'resnest14', '--params', str(tmp_path / 'p'), image]) == 2
    assert 'no parameter file at' in capsys.readouterr().err
    short = tmp_path / 'three.txt'
    short.write_text('a\nb\nc\n')
    assert predict.main(['--prefix', str(files['folder'] / 'export' / 'net'), '--classes',
                         str(short), image]) == 2
    assert '3 class names for 10 outputs' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict.main(['--model', 'resnest14', image])  # --model needs --params


def test_eval_transform_geometry(files):
    assert resize_size(224) == 256 and resize_size(320) == 366 and resize_size(64) == 74
    img = load_image(str(files['folder'] / 'grey.jpg'))
    assert img.shape == (100, 70, 3) and img.dtype == np.uint8
    batch = eval_transform(img, 64, mean=None, std=None)
    assert batch.shape == (1, 3, 64, 64)
    assert 0 <= batch.min().asscalar() and batch.max().asscalar() <= 255


def test_help():
    result = run_tool('predict', '--help')
    assert result.returncode == 0 and '--prefix' in result.stdout
