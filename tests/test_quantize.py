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
from plain_mxnet import load_with_plain_mxnet

from conftest import randomize_norm_stats
from gluon_resnest import get_model
from gluon_resnest import native as native_ops
from gluon_resnest.deploy import eval_transform, export_network, load_exported
from gluon_resnest.deploy.inference import fold_batchnorm
from gluon_resnest.deploy.quantization import (
    grouped_convolutions,
    quantize_network,
    split_grouped_convolutions,
    sum_splits_per_branch,
)
from gluon_resnest.models import KAIMING_FAN_IN

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
    net.initialize(KAIMING_FAN_IN)  # weights at the scale training starts from
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


def _run(sym, args, aux, x):
    exe = sym.bind(mx.cpu(), dict(args, data=x), aux_states=aux)
    return exe.forward(is_train=False)[0].asnumpy()


def _ops(sym):
    return [n['op'] for n in json.loads(sym.tojson())['nodes']]


@pytest.mark.parametrize('cardinality', [1, 2])
def test_split_grouped_convolutions_is_exact(cardinality):
    """Grouped 3x3 (radix*cardinality groups) and, for cardinality 2, the grouped 1x1 fc1/fc2
    (with bias) become ungrouped convolutions on channel slices; FP32 outputs are unchanged,
    before and after BatchNorm folding."""
    mx.random.seed(1)
    net = get_model('resnest14', classes=10, cardinality=cardinality)
    net.initialize(mx.init.Xavier(magnitude=2))
    randomize_norm_stats(net, seed=5)
    x = mx.nd.random.uniform(-2, 2, (2, 3, 32, 32))
    net.hybridize()
    net(x)
    symbol = net(mx.sym.var('data'))
    params = {k: v.data() for k, v in net.collect_params().items()}
    args = {k: v for k, v in params.items() if k in symbol.list_arguments()}
    aux = {k: v for k, v in params.items() if k in symbol.list_auxiliary_states()}
    grouped = grouped_convolutions(symbol)
    assert len(grouped) == (4 if cardinality == 1 else 12)
    ref = _run(symbol, args, aux, x)
    np.testing.assert_allclose(ref, net(x).asnumpy(), rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    folded = fold_batchnorm(symbol, args, aux)
    # Unfolded, a BatchNorm sits between each producer and grouped conv: every grouped conv
    # slices its input. Folded, the 1x1 conv before each 3x3 grouped conv is split by output
    # channels instead, and a grouped fc1 feeds the grouped fc2 block by block: only fc1
    # (input: the pooled sum of the splits) slices.
    slices = (len(grouped), 0 if cardinality == 1 else 4)
    concats = (len(grouped), 4 if cardinality == 1 else 8)  # fc1's outputs go to fc2 unjoined
    for (sym, a, b), slices_expected, concats_expected in zip(((symbol, args, aux), folded),
                                                               slices, concats):
        split, sargs, saux = split_grouped_convolutions(sym, a, b)
        assert grouped_convolutions(split) == []
        ops = _ops(split)
        assert ops.count('Concat') == concats_expected
        assert ops.count('SliceChannel') == slices_expected
        assert not any(name in sargs for name in (f'{g}_weight' for g in grouped))
        out = _run(split, sargs, saux, x)
        assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()
        # The Split-Attention weighted sum on the branches: bitwise equal. Only where the
        # branches are joined right before it (folded BatchNorm, cardinality 1).
        summed = sum_splits_per_branch(split)
        rewritten = 4 if cardinality == 1 and slices_expected == 0 else 0
        ops = _ops(summed)
        assert ops.count('batch_dot') == 4 - rewritten
        assert ops.count('add_n') == rewritten
        np.testing.assert_array_equal(_run(summed, sargs, saux, x), out)
    # the inputs are left alone
    assert len(grouped_convolutions(folded[0])) == len(grouped)


def _quantized_convs(qsym) -> dict[str, list[str]]:
    """FP32 names of the convolutions inside each quantized oneDNN conv of ``qsym``."""
    found = {}
    for node in json.loads(qsym.tojson())['nodes']:
        if node['op'] == '_sg_mkldnn_conv' and node.get('attrs', {}).get('quantized') == 'true':
            found[node['name']] = [n['name'] for n in node['subgraphs'][0]['nodes']
                                   if n['op'] == 'Convolution']
    return found


def test_quantize_network_splits_grouped_convolutions(fp32_export):
    net, _ = load_exported(fp32_export)
    rng = np.random.RandomState(0)
    calib = [mx.nd.array(rng.uniform(-2, 2, (8, 3, SIZE, SIZE)).astype(np.float32))
             for _ in range(2)]
    x = mx.nd.array(rng.uniform(-2, 2, (32, 3, SIZE, SIZE)).astype(np.float32))
    ref = net(x).asnumpy()
    symbol, args, aux = mx.model.load_checkpoint(fp32_export, 0)
    grouped = grouped_convolutions(symbol)
    assert grouped
    qnet = quantize_network(net, calib)
    qsym = qnet(mx.sym.var('data'))
    inside = [c for convs in _quantized_convs(qsym).values() for c in convs]
    assert not any(n['op'] == 'Convolution' for n in json.loads(qsym.tojson())['nodes'])
    for name in grouped:  # 2 groups (radix 2) each, all INT8
        assert {f'{name}_g0', f'{name}_g1'} <= set(inside), name
    got = qnet(x).asnumpy()
    agree = np.mean(ref.argmax(1) == got.argmax(1))
    assert agree >= 0.9, f'INT8 argmax agrees with FP32 on {agree:.0%}'

    def error(out):
        return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    # Without the split the grouped convolutions stay FP32 (MXNet 1.9.1's INT8 grouped conv).
    kept = quantize_network(net, calib, split_grouped=False)
    inside = [c for convs in _quantized_convs(kept(mx.sym.var('data'))).values() for c in convs]
    assert not set(grouped) & set(inside)
    # Quantizing the split convolutions adds little error; MXNet's INT8 grouped conv adds a lot
    # (measured on this net: 0.27, 0.26 and 0.43 relative error).
    grouped_int8 = quantize_network(net, calib, split_grouped=False, quantize_grouped=True)
    assert error(got) <= 1.25 * error(kept(x).asnumpy()) + 0.02
    assert error(got) <= 0.7 * error(grouped_int8(x).asnumpy())


@pytest.mark.parametrize('native', [True, False], ids=['native', 'default'])
def test_quantize_tool(calib_rec, fp32_export, tmp_path, native):
    """The default export holds MXNet's operators only (plain MXNet loads it, in a process
    that never imports gluon_resnest); ``--native`` fuses the Split-Attention sums and says
    what loading that export needs."""
    if native:
        try:
            native_ops.load(required=True)
        except native_ops.NativeBuildError as err:
            pytest.skip(f'the native operator library is unavailable here: {err}')
    rec, images = calib_rec
    out = str(tmp_path / 'int8' / 'resnest14-int8')
    proc = subprocess.run([sys.executable, TOOL, '--prefix', fp32_export, '--calib-rec', rec,
                           '--output', out, '--batch-size', '8', '--num-calib-examples', '24',
                           '--num-workers', '0'] + (['--native'] if native else []),
                          capture_output=True, text=True, cwd=REPO, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("calls gluon_resnest's native operators (gluon_resnest_sa_sum_u8)" in
            proc.stderr) is native
    meta = json.load(open(f'{out}-meta.json', encoding='utf-8'))
    assert meta['quantized'] is True and meta['input_size'] == SIZE
    assert meta['calibration']['examples'] == 24
    text = open(f'{out}-symbol.json', encoding='utf-8').read()
    assert ('"gluon_resnest_sa_sum_u8"' in text) is native
    assert meta['native_operators'] == (['gluon_resnest_sa_sum_u8'] if native else [])
    if native:
        qnet, _ = load_exported(out)  # loads the operator library itself
    else:  # a portable export: plain MXNet reads it
        qnet = mx.gluon.SymbolBlock.imports(f'{out}-symbol.json', ['data'],
                                            f'{out}-0000.params')
    fnet = mx.gluon.SymbolBlock.imports(f'{fp32_export}-symbol.json', ['data'],
                                        f'{fp32_export}-0000.params')
    qsym = json.loads(text)
    assert any('quantize' in n['op'] for n in qsym['nodes'])
    batch = mx.nd.concat(*[eval_transform(mx.image.imdecode(raw), SIZE) for raw in images],
                         dim=0)
    ref = fnet(batch).asnumpy()
    got = qnet(batch).asnumpy()
    assert got.shape == ref.shape == (24, 10)
    if not native:
        plain, module = load_with_plain_mxnet(out, batch.asnumpy(), str(tmp_path))
        assert np.array_equal(plain, got) and np.array_equal(module, got)
    agree = np.mean(ref.argmax(1) == got.argmax(1))
    assert agree >= 0.75, f'INT8 argmax agrees with FP32 on {agree:.0%} of the images'


def test_quantize_tool_native_needs_uint8_splits(fp32_export, tmp_path):
    proc = subprocess.run([sys.executable, TOOL, '--prefix', fp32_export, '--calib-rec', 'x.rec',
                           '--output', str(tmp_path / 'q'), '--native', '--quantized-dtype',
                           'int8'], capture_output=True, text=True, cwd=REPO, timeout=300,
                          check=False)
    assert proc.returncode == 2
    assert 'quantize: error: --native needs uint8 activations' in proc.stderr


def test_quantize_tool_uint8_on_signed_input(calib_rec, fp32_export, tmp_path):
    """The fixture's export normalises its input (signed values): uint8 everywhere is refused
    in one line, and nothing is written."""
    out = tmp_path / 'q'
    proc = subprocess.run([sys.executable, TOOL, '--prefix', fp32_export, '--calib-rec',
                           calib_rec[0], '--output', str(out), '--batch-size', '8',
                           '--num-calib-examples', '8', '--num-workers', '0',
                           '--quantized-dtype', 'uint8'],
                          capture_output=True, text=True, cwd=REPO, timeout=600, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert 'quantize: error: --quantized-dtype uint8: a quantized layer reads negative' in \
        proc.stderr
    assert 'Traceback' not in proc.stderr
    assert not list(tmp_path.iterdir())


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


BENCH = os.path.join(REPO, 'tools', 'benchmark.py')


@pytest.mark.slow
def test_benchmark_int8_variants():
    """tools/benchmark.py times one INT8 row per --int8-variant against our FP32 row."""
    proc = subprocess.run([sys.executable, BENCH, '--model', 'resnest14', '--input-size', '32',
                           '--batch-size', '2', '--classes', '10', '--dtype', 'int8',
                           '--int8-variant', '{}', '--int8-variant', '{"split_grouped": false}',
                           '--repetitions', '1', '--iters', '1', '--latency-iters', '0',
                           '--json'],
                          capture_output=True, text=True, cwd=REPO, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    rows = [(r['dtype'], r.get('quantize_options')) for r in report['results']]
    assert rows == [('int8', {}), ('int8', {'split_grouped': False}), ('float32', None)]
    assert set(report['int8_speedup']) == {'ours-int8', 'ours-int8 {"split_grouped": false}'}
    assert all(v > 0 for v in report['int8_speedup'].values())


def test_benchmark_rejects_bad_int8_variant():
    for extra in (['--dtype', 'int8', '--int8-variant', '{oops'],
                  ['--dtype', 'int8', '--int8-variant', '[1]'],
                  ['--int8-variant', '{}']):
        proc = subprocess.run([sys.executable, BENCH, '--model', 'resnest14', *extra],
                              capture_output=True, text=True, cwd=REPO, timeout=300,
                              check=False)
        assert proc.returncode == 2 and '--int8-variant' in proc.stderr, proc.stderr[-2000:]
