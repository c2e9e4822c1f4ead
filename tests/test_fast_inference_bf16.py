"""bfloat16 inference on oneDNN 3 (fast_inference(..., dtype='bfloat16')) against float32."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from tools_cli import load_tool, tame_residual_branches

from conftest import assert_close_to_largest, randomize_norm_stats
from gluon_resnest import get_model, native
from gluon_resnest.deploy import export_network, load_exported
from gluon_resnest.deploy.fast_inference import fast_inference
from gluon_resnest.native import bf16

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BF16_REASON = bf16.unavailable_reason() if native.enabled() else 'GLUON_RESNEST_NATIVE=0'
needs_bf16 = pytest.mark.skipif(BF16_REASON is not None,
                                reason=f'bfloat16 operators unavailable: {BF16_REASON}')

# bfloat16 keeps 8 significant bits: each rounded value is within 2**-9 (0.2 %) of its float32
# value. ResNeSt-14 rounds its feature maps after each of its 19 convolutions and 4 weighted
# sums (and its weights once); such errors add up like a random walk, a few times 0.2 %, with
# the residual stream summing the branches' errors. 3 % of the largest logit leaves room for
# that and still fails for a wrong kernel (a missing residual, a wrong split or attention
# changes logits by tens of percent).
TOL = 3e-2


def _net(name='resnest14', seed=0):
    mx.random.seed(seed)
    net = get_model(name, classes=10)
    net.initialize(mx.init.Xavier())
    randomize_norm_stats(net, seed)
    tame_residual_branches(net, seed)
    return net


def _input(shape, seed=0):
    return mx.nd.array(np.random.RandomState(seed).uniform(-1, 1, shape).astype(np.float32))


def _ops(block):
    return [n['op'] for n in json.loads(block(mx.sym.var('data')).tojson())['nodes']]


@needs_bf16
def test_bfloat16_output_close_to_float32():
    """Every convolution and Split-Attention operator runs in bfloat16 (the graph holds only the
    bf16 variants, and they ran), the output is float32 and within the bfloat16 tolerance of
    the float32 graph, not equal to it, with the same top-1 class for every image."""
    net = _net()
    x = _input((4, 3, 64, 64))
    want = fast_inference(net, x)(x).asnumpy()
    before = bf16.calls()
    block = fast_inference(net, x, dtype='bfloat16')
    out = block(x)
    assert out.dtype == np.float32
    got = out.asnumpy()
    after = bf16.calls()
    winograd_before = native._winograd_runs()
    block(x).wait_to_read()
    winograd_runs = native._winograd_runs() - winograd_before
    ops = _ops(block)
    assert 'gluon_resnest_conv' not in ops and 'gluon_resnest_sa_sum_nhwc' not in ops
    assert ops.count('gluon_resnest_conv_bf16') == 19
    assert ops.count('gluon_resnest_sa_sum_nhwc_bf16') == 4
    assert ops.count('gluon_resnest_sa_gap_nhwc_bf16') == 5  # and the global pooling
    assert 'Cast' not in ops  # every operator reads the type it computes in
    assert all(after[k] > before[k] for k in bf16.OPERATORS), (before, after)
    # Winograd: the two stem 3x3s of stride 1 (32 x 32 maps) and the Split-Attention 3x3s on
    # 16 x 16 (layers 1 and 2: 64 tiles) and 8 x 8 (layer 3: 16 tiles); layer 4's (4 x 4, 4
    # tiles) runs direct.
    assert winograd_runs == 5, winograd_runs
    assert_close_to_largest(got, want, TOL)
    direct = fast_inference(net, x, dtype='bfloat16', winograd=False)
    winograd_before = native._winograd_runs()
    assert_close_to_largest(direct(x).asnumpy(), want, TOL)
    assert native._winograd_runs() == winograd_before  # winograd=False: every conv direct
    assert np.abs(got - want).max() > 1e-6 * np.abs(want).max()  # it did round
    assert (got.argmax(1) == want.argmax(1)).all()


def _winograd_case(seed=0, shape=(2, 64, 15, 13), groups=2):
    rng = np.random.RandomState(seed)

    def rounded(a):
        return mx.nd.Cast(mx.nd.Cast(mx.nd.array(a), dtype='bfloat16'), dtype='float32')

    channels = shape[1]
    x = rounded(rng.normal(size=shape))
    w = rounded(rng.normal(scale=0.1, size=(channels, channels // groups, 3, 3)))
    b = mx.nd.array(rng.normal(size=(channels,)))
    r = rounded(rng.normal(size=shape))
    want = mx.nd.relu(mx.nd.Convolution(x, w, b, kernel=(3, 3), pad=(1, 1), num_filter=channels,
                                        num_group=groups) + r).asnumpy()

    def run(mode):
        y = mx.nd.gluon_resnest_conv_bf16(
            mx.nd.Cast(x, dtype='bfloat16'), w, b, mx.nd.Cast(r, dtype='bfloat16'),
            kernel=(3, 3), stride=(1, 1), pad=(1, 1), dilate=(1, 1), num_filter=channels,
            num_group=groups, relu=1, sum=1, winograd=mode)
        return mx.nd.Cast(y, dtype='float32').asnumpy()
    return want, run


@needs_bf16
def test_bfloat16_winograd_operator_against_mxnet():
    """gluon_resnest_conv_bf16 with winograd=1 (bfloat16 transform-domain products) and 2
    (float32 products) on 32 tiles against MXNet's float32 convolution of the same rounded
    values: float32 products as close as the direct bf16 convolution (a few bf16 rounding
    steps of the output), bfloat16 products within 10 % of the largest output (rounding the
    transformed values; a wrong transform, tile or group is off by the whole output), and both
    ran as Winograd."""
    want, run = _winograd_case()
    scale = np.abs(want).max()
    before = native._winograd_runs()
    direct, fp32, bf = run(0), run(2), run(1)
    assert native._winograd_runs() - before == 2
    assert np.abs(direct - want).max() <= 1e-2 * scale
    assert np.abs(fp32 - want).max() <= 1e-2 * scale
    assert np.abs(bf - want).max() <= 1e-1 * scale
    # The bfloat16 products do round: the result is not the float32 products'.
    assert np.abs(bf - fp32).max() > 1e-3 * scale


@needs_bf16
def test_bfloat16_winograd_split_schedule_on_two_threads():
    """Winograd with 16 tiles (one 14 x 14 map) on two OpenMP threads: the threads split the
    matmul by transform positions; both products' types against MXNet."""
    code = (
        'import sys; sys.path.insert(0, "tests")\n'
        'import numpy as np\n'
        'from test_fast_inference_bf16 import _winograd_case\n'
        'want, run = _winograd_case(seed=3, shape=(1, 32, 14, 14))\n'
        'scale = np.abs(want).max()\n'
        'print("ERR", *(float(np.abs(run(m) - want).max() / scale) for m in (0, 2, 1)))\n')
    proc = _run(code, OMP_NUM_THREADS='2')
    direct, fp32, bf = (float(v) for v in proc.stdout.split('ERR ')[1].split())
    assert direct <= 1e-2 and fp32 <= 1e-2 and bf <= 1e-1, proc.stdout


@needs_bf16
def test_bfloat16_winograd_off_runs_direct():
    """to_bfloat16(winograd=False) marks no convolution for Winograd; the default marks the
    3x3 convolutions of stride 1 (bfloat16 products), products='float32' with mode 2."""
    from gluon_resnest.deploy.fast_inference import fast_inference_graph
    from gluon_resnest.deploy.fast_inference_bf16 import to_bfloat16

    net = _net(seed=4)
    net.hybridize()
    net(_input((1, 3, 32, 32)))
    sym = net(mx.sym.var('data'))
    params = net.collect_params()
    values = {p.var().name: p.data() for p in params.values()}
    aux_names = set(sym.list_auxiliary_states())
    args = {k: v for k, v in values.items() if k not in aux_names}
    aux = {k: v for k, v in values.items() if k in aux_names}
    f32, *_ = fast_inference_graph(sym, args, aux, data_shape=(1, 3, 32, 32), winograd=False)

    def modes(symbol):
        return sorted(n.get('attrs', {}).get('winograd', '0')
                      for n in json.loads(symbol.tojson())['nodes']
                      if n['op'] == 'gluon_resnest_conv_bf16')
    on, counts = to_bfloat16(f32)
    assert counts['winograd'] == modes(on).count('1') > 0
    off, counts = to_bfloat16(f32, winograd=False)
    assert counts['winograd'] == 0 and set(modes(off)) == {'0'}
    wide, _ = to_bfloat16(f32, products='float32')
    assert modes(wide).count('2') == modes(on).count('1')
    with pytest.raises(ValueError, match='products'):
        to_bfloat16(f32, products='float16')


@needs_bf16
def test_bfloat16_export_reloads_with_the_same_outputs(tmp_path):
    """export_network(fast=True, dtype='bfloat16') writes the bf16 graph (meta: compute_dtype)
    and load_exported gives the same outputs as the block in memory."""
    net = _net(seed=1)
    x = _input((1, 3, 64, 64), seed=1)
    want = fast_inference(net, x, dtype='bfloat16')(x).asnumpy()
    prefix = str(tmp_path / 'bf16')
    symbol_file, _ = export_network(net, prefix, input_size=64, fast=True, dtype='bfloat16')
    with open(symbol_file, encoding='utf-8') as handle:
        text = handle.read()
    assert '"gluon_resnest_conv_bf16"' in text and '"gluon_resnest_conv"' not in text
    block, meta = load_exported(prefix)
    assert meta['compute_dtype'] == 'bfloat16' and meta['fast']
    got = block(x).asnumpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


@needs_bf16
def test_export_tool_writes_the_bfloat16_graph(tmp_path, capsys):
    """tools/export.py --fast --dtype bfloat16: the bf16 operators in the symbol, the meta file
    says so, the note names them, and the export loads and runs (float32 output)."""
    export = load_tool('export')
    prefix = str(tmp_path / 'cli')
    assert export.main(['--model', 'resnest14', '--classes', '10', '--input-size', '32',
                        '--fast', '--dtype', 'bfloat16', '--prefix', prefix]) == 0
    assert 'gluon_resnest_conv_bf16' in capsys.readouterr().err
    block, meta = load_exported(prefix)
    assert meta['compute_dtype'] == 'bfloat16'
    assert 'gluon_resnest_conv_bf16' in meta['native_operators']
    out = block(_input((2, 3, 32, 32)))
    assert out.dtype == np.float32 and out.shape == (2, 10)
    assert np.isfinite(out.asnumpy()).all()


def test_export_tool_refuses_bfloat16_without_fast(capsys):
    """--dtype bfloat16 is for the --fast graph: one error line, status 2."""
    export = load_tool('export')
    with pytest.raises(SystemExit) as exc:
        export.main(['--model', 'resnest14', '--prefix', 'unused', '--dtype', 'bfloat16'])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith('export: error: ') and '--fast' in err[-1]


@needs_bf16
def test_cpu_without_bfloat16_falls_back_to_float32(monkeypatch, caplog):
    """Where the CPU lacks bfloat16 instructions: one warning, the float32 graph, float32
    results (strict raises)."""
    monkeypatch.setattr(bf16, 'cpu_refusal', lambda: 'this CPU has no bfloat16 instructions')
    net = _net(seed=2)
    x = _input((1, 3, 64, 64), seed=2)
    with caplog.at_level(logging.WARNING, logger='gluon_resnest.deploy.fast_inference'):
        block = fast_inference(net, x, dtype='bfloat16')
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and 'no bfloat16 instructions' in warnings[0].getMessage()
    assert 'gluon_resnest_conv' in _ops(block) and 'gluon_resnest_conv_bf16' not in _ops(block)
    np.testing.assert_array_equal(block(x).asnumpy(), fast_inference(net, x)(x).asnumpy())
    with pytest.raises(native.NativeBuildError, match='bfloat16'):
        fast_inference(net, x, dtype='bfloat16', strict=True)


def test_cpu_refusal_reads_the_flags(tmp_path):
    info = tmp_path / 'cpuinfo'
    info.write_text('processor\t: 0\nflags\t\t: fpu sse avx512f avx512bw\n')
    assert 'no bfloat16' in bf16.cpu_refusal(str(info))
    info.write_text('processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n')
    assert bf16.cpu_refusal(str(info)) is None
    info.write_text('processor\t: 0\nflags\t\t: fpu amx_bf16 amx_tile\n')
    assert bf16.cpu_refusal(str(info)) is None


def test_unknown_dtype_is_refused():
    net = _net(seed=3)
    x = _input((1, 3, 32, 32))
    with pytest.raises(ValueError, match='dtype'):
        fast_inference(net, x, dtype='float16')


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    full = dict(os.environ, OMP_NUM_THREADS='1')
    full.update(env)
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=full,
                          cwd=REPO, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


_COMPARE = (
    'import sys; sys.path.insert(0, "tests")\n'
    'import mxnet as mx, numpy as np\n'
    'from conftest import randomize_norm_stats\n'
    'from gluon_resnest import get_model\n'
    'from gluon_resnest.deploy.fast_inference import fast_inference\n'
    'mx.random.seed(0)\n'
    'net = get_model("resnest14", classes=10)\n'
    'net.initialize(mx.init.Xavier())\n'
    'randomize_norm_stats(net, 0)\n'
    'x = mx.nd.array(np.random.RandomState(0).uniform(-1, 1, (1, 3, 32, 32)))\n'
    'block = fast_inference(net, x, dtype="bfloat16")\n'
    'ops = block(mx.sym.var("data")).tojson()\n'
    'print("BF16OPS", "gluon_resnest_conv_bf16" in ops)\n'
    'got, want = block(x).asnumpy(), {want}\n'
    'print("DIFF", float(np.abs(got - want).max() / np.abs(want).max()))\n')


def test_native_off_gives_float32_with_one_warning():
    """GLUON_RESNEST_NATIVE=0: fast_inference(dtype='bfloat16') warns once and returns the
    network on MXNet's float32 operators (the same outputs as the network)."""
    proc = _run(_COMPARE.format(want='net(x).asnumpy()'), GLUON_RESNEST_NATIVE='0')
    assert 'BF16OPS False' in proc.stdout
    diff = float(proc.stdout.split('DIFF ')[1].split()[0])
    assert diff < 1e-5
    warnings = [line for line in proc.stderr.splitlines() if 'unavailable' in line]
    assert len(warnings) == 1, proc.stderr
    assert "MXNet's operators" in warnings[0]


@needs_bf16
def test_self_check_rejects_a_perturbed_bfloat16_operator():
    """One output element of gluon_resnest_sa_sum_nhwc_bf16 made wrong: the self-check names
    it, bfloat16 inference is refused with one warning, and fast_inference runs the float32
    graph (whose operators passed) with its outputs."""
    code = _COMPARE.format(want='fast_inference(net, x)(x).asnumpy()') + (
        'from gluon_resnest import native\n'
        'print("F32FAST", native.fast_inference_available())\n'
        'print("REASON", native.bf16.unavailable_reason())\n')
    proc = _run(code, GLUON_RESNEST_NATIVE_SELFTEST_PERTURB='gluon_resnest_sa_sum_nhwc_bf16')
    assert 'BF16OPS False' in proc.stdout and 'F32FAST True' in proc.stdout
    assert 'gluon_resnest_sa_sum_nhwc_bf16 differs from MXNet' in proc.stdout
    assert float(proc.stdout.split('DIFF ')[1].split()[0]) == 0.0
    warnings = [line for line in proc.stderr.splitlines() if 'bfloat16' in line]
    assert len(warnings) == 1, proc.stderr
    assert 'gluon_resnest_sa_sum_nhwc_bf16 differs from MXNet' in warnings[0]
