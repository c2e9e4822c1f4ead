"""tools/quantize.py on a real small export, calibrated on a real RecordIO file of JPEGs."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from PIL import Image

from conftest import randomize_norm_stats
from gluon_resnest import get_model
from gluon_resnest.deploy import eval_transform, export_network
from gluon_resnest.inference import fold_batchnorm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, 'tools', 'quantize.py')
SIZE = 64


def _image(rng: np.random.RandomState) -> Image.Image:
    """A colored background with a few random rectangles: varied, decodable content."""
    arr = np.empty((80, 96, 3), np.uint8)
    arr[:] = rng.randint(0, 256, 3)
    for _ in range(4):
        y, x = rng.randint(0, 60), rng.randint(0, 70)
        arr[y:y + rng.randint(8, 20), x:x + rng.randint(8, 26)] = rng.randint(0, 256, 3)
    return Image.fromarray(arr)


@pytest.fixture(scope='module')
def calib_rec(tmp_path_factory):
    folder = tmp_path_factory.mktemp('rec')
    rec = str(folder / 'calib.rec')
    writer = mx.recordio.MXIndexedRecordIO(str(folder / 'calib.idx'), rec, 'w')
    rng = np.random.RandomState(0)
    images = []
    for i in range(24):
        buf = io.BytesIO()
        img = _image(rng)
        img.save(buf, format='JPEG', quality=95)
        images.append(buf.getvalue())
        writer.write_idx(i, mx.recordio.pack(mx.recordio.IRHeader(0, i % 10, i, 0),
                                             buf.getvalue()))
    writer.close()
    return rec, images


@pytest.fixture(scope='module')
def fp32_export(tmp_path_factory):
    mx.random.seed(0)
    net = get_model('resnest14', classes=10)
    net.initialize(mx.init.Xavier(magnitude=2))
    randomize_norm_stats(net, seed=3)
    prefix = str(tmp_path_factory.mktemp('export') / 'resnest14')
    export_network(net, prefix, input_size=SIZE)
    return prefix


def test_fold_batchnorm_is_exact(fp32_export):
    symbol, args, aux = mx.model.load_checkpoint(fp32_export, 0)
    folded, fargs, faux = fold_batchnorm(symbol, args, aux)
    ops = [n['op'] for n in json.loads(folded.tojson())['nodes']]
    assert 'BatchNorm' not in ops and ops.count('Convolution') > 10
    x = mx.nd.random.uniform(-2, 2, (2, 3, SIZE, SIZE))

    def run(sym, a, b):
        exe = sym.bind(mx.cpu(), dict(a, data=x), aux_states=b)
        return exe.forward(is_train=False)[0].asnumpy()
    ref, out = run(symbol, args, aux), run(folded, fargs, faux)
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


def test_quantize_tool(calib_rec, fp32_export, tmp_path):
    rec, images = calib_rec
    out = str(tmp_path / 'int8' / 'resnest14-int8')
    proc = subprocess.run([sys.executable, TOOL, '--prefix', fp32_export, '--calib-rec', rec,
                           '--output', out, '--batch-size', '8', '--num-calib-examples', '24',
                           '--num-workers', '0'],
                          capture_output=True, text=True, cwd=REPO, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.load(open(f'{out}-meta.json', encoding='utf-8'))
    assert meta['quantized'] is True and meta['input_size'] == SIZE
    assert meta['calibration']['examples'] == 24
    qnet = mx.gluon.SymbolBlock.imports(f'{out}-symbol.json', ['data'], f'{out}-0000.params')
    fnet = mx.gluon.SymbolBlock.imports(f'{fp32_export}-symbol.json', ['data'],
                                        f'{fp32_export}-0000.params')
    qsym = json.loads(open(f'{out}-symbol.json', encoding='utf-8').read())
    assert any('quantize' in n['op'] for n in qsym['nodes'])
    batch = mx.nd.concat(*[eval_transform(mx.image.imdecode(raw), SIZE) for raw in images],
                         dim=0)
    ref = fnet(batch).asnumpy()
    got = qnet(batch).asnumpy()
    assert got.shape == ref.shape == (24, 10)
    agree = np.mean(ref.argmax(1) == got.argmax(1))
    assert agree >= 0.75, f'INT8 argmax agrees with FP32 on {agree:.0%} of the images'


def test_quantize_tool_bad_input(fp32_export, tmp_path):
    proc = subprocess.run([sys.executable, TOOL, '--prefix', fp32_export, '--calib-rec',
                           str(tmp_path / 'missing.rec'), '--output', str(tmp_path / 'q')],
                          capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    assert proc.returncode != 0 and 'missing.rec' in proc.stderr
    proc = subprocess.run([sys.executable, TOOL, '--prefix', str(tmp_path / 'nope'),
                           '--calib-rec', str(tmp_path / 'x.rec'), '--output',
                           str(tmp_path / 'q')],
                          capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    assert proc.returncode != 0 and 'nope' in proc.stderr
