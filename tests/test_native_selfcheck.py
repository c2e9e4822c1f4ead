"""The native libraries are checked against MXNet before they are trusted, and optional."""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

from gluon_resnest import native
from gluon_resnest.native import selfcheck

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    full = dict(os.environ, OMP_NUM_THREADS='1', **env)
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=full,
                          cwd=REPO, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _library_or_skip() -> None:
    try:
        native.load(required=True)
    except native.NativeBuildError as err:
        pytest.skip(f'the native operator library is unavailable here: {err}')


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if 'self-check' in line]


def test_self_check_rejects_a_perturbed_training_operator():
    """One output element of gluon_resnest_sa_sum made wrong: the self-check names it and the
    difference in one warning, the library is not loaded, and a network built the way the
    training loop builds it (``native=native.load()``) computes what MXNet's operators do."""
    _library_or_skip()
    code = (
        'import mxnet as mx, numpy as np\n'
        'from gluon_resnest import get_model, native\n'
        'use = native.load()\n'
        'print("LOADED", use)\n'
        'def run(native_ops):\n'
        '    mx.random.seed(0)\n'
        '    net = get_model("resnest14", classes=10, native=native_ops)\n'
        '    net.initialize(mx.init.Xavier())\n'
        '    x = mx.nd.array(np.random.RandomState(0).uniform(-1, 1, (2, 3, 32, 32)))\n'
        '    with mx.autograd.record():\n'
        '        y = net(x)\n'
        '    y.backward()\n'
        '    return [y.asnumpy()] + [p.grad().asnumpy() for p in net.collect_params().values()\n'
        '                            if p.grad_req != "null"]\n'
        'got, want = run(use), run(False)\n'
        'print("SAME", len(got) == len(want) and all((a == b).all() for a, b in zip(got, want)))\n')
    proc = _run(code, GLUON_RESNEST_NATIVE_SELFTEST_PERTURB='gluon_resnest_sa_sum')
    assert 'LOADED False' in proc.stdout
    assert 'SAME True' in proc.stdout
    lines = _warnings(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert 'gluon_resnest_sa_sum differs from MXNet' in lines[0]
    assert 'largest difference' in lines[0]


def test_unperturbed_library_passes_and_its_verdict_is_kept():
    """Here the libraries pass; the verdict is stored beside the build, and a stored verdict
    is what a later process uses (one planted as failed makes it keep MXNet's operators)."""
    _library_or_skip()
    ops = native.library_paths()[0]
    paths = {'ops': ops, 'onednn': native._state['onednn_path'],
             'conv': native._state['conv_path']}
    if native.onednn_loaded() and native.fast_inference_available():
        assert selfcheck.verdict(paths) == []
    folder = os.path.dirname(ops)
    assert glob.glob(os.path.join(folder, 'selfcheck-*.json'))
    # A verdict for an environment of its own (the perturbation switch is part of the key).
    env = {selfcheck.PERTURB_ENV: 'no_such_operator_planted'}
    old = os.environ.get(selfcheck.PERTURB_ENV)
    os.environ.update(env)
    try:
        planted = os.path.join(folder, f'selfcheck-{selfcheck._cache_key(paths)}.json')
    finally:
        if old is None:
            del os.environ[selfcheck.PERTURB_ENV]
        else:
            os.environ[selfcheck.PERTURB_ENV] = old
    with open(planted, 'w', encoding='utf-8') as handle:
        json.dump({'failures': [{'op': 'gluon_resnest_sa_gap', 'detail': 'planted'}]}, handle)
    try:
        proc = _run('from gluon_resnest import native\nprint("LOADED", native.load())\n', **env)
    finally:
        os.unlink(planted)
    assert 'LOADED False' in proc.stdout
    assert 'gluon_resnest_sa_gap differs from MXNet: planted' in proc.stderr


#: The operators the self-check must compare: every registered one, and the backward ones.
CHECKED = native.OPERATORS + ('_backward_gluon_resnest_sa_gap', '_backward_gluon_resnest_sa_sum')


def test_self_check_covers_every_operator_and_layout_path():
    """Every registered operator (and the backward ones) is compared, and every layout path of
    the oneDNN-layout library runs: INT8 and float32 N x H x W x C in place and reordered,
    nChw16c in place in training (all four operators) and the operator-library fallback."""
    _library_or_skip()
    full = native.onednn_loaded() and native.fast_inference_available()
    before = native.onednn_calls() if native.onednn_loaded() else None
    records = selfcheck.run_checks()
    assert records and all(r['ok'] for r in records), [r for r in records if not r['ok']]
    if not full:
        pytest.skip('the oneDNN-layout libraries are not all loaded here')
    assert {r['op'] for r in records} == set(CHECKED)
    after = native.onednn_calls()
    runs = {k: after[k] - before[k] for k in after}
    assert all(n > 0 for n in runs.values()), runs
    # Both pooling variants of the four training operators read nChw16c in place.
    assert runs['train_nchw16c'] == 8, runs


@pytest.mark.slow
@pytest.mark.parametrize('op', CHECKED)
def test_self_check_rejects_each_perturbed_operator(op, monkeypatch):
    """One output element of any checked operator made wrong: the check's child process names
    that operator among its failures."""
    _library_or_skip()
    if op in selfcheck.FAST_INFERENCE_OPERATORS and not native.fast_inference_available():
        pytest.skip(native.fast_inference_unavailable_reason())
    monkeypatch.setenv(selfcheck.PERTURB_ENV, op)
    failures, definite = selfcheck._run_child()
    assert definite
    named = [f for f in failures if f['op'] == op]
    assert named, failures
    assert all('largest difference' in f['detail'] for f in named)


def test_self_check_rejects_a_perturbed_int8_operator():
    """A wrong gluon_resnest_sa_sum_u8: the library is not loaded (one warning naming it) and
    INT8 quantization keeps MXNet's operators, with their results."""
    _library_or_skip()
    code = (
        'import json, mxnet as mx, numpy as np\n'
        'from gluon_resnest import get_model, native\n'
        'from gluon_resnest.deploy.quantization import quantize_network\n'
        'print("LOADED", native.load())\n'
        'mx.random.seed(0)\n'
        'net = get_model("resnest14", classes=10); net.initialize(mx.init.Xavier())\n'
        'rng = np.random.RandomState(0)\n'
        'calib = [mx.nd.array(rng.uniform(-1, 1, (4, 3, 32, 32)))]\n'
        'q = quantize_network(net, calib)\n'
        'ops = [n["op"] for n in json.loads(q(mx.sym.var("data")).tojson())["nodes"]]\n'
        'print("NATIVE", "gluon_resnest_sa_sum_u8" in ops)\n'
        'want = quantize_network(net, calib, native=False)\n'
        'print("SAME", bool((q(calib[0]).asnumpy() == want(calib[0]).asnumpy()).all()))\n')
    proc = _run(code, GLUON_RESNEST_NATIVE_SELFTEST_PERTURB='gluon_resnest_sa_sum_u8')
    assert 'LOADED False' in proc.stdout
    assert 'NATIVE False' in proc.stdout
    assert 'SAME True' in proc.stdout
    lines = _warnings(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert 'gluon_resnest_sa_sum_u8 differs from MXNet' in lines[0]


@pytest.mark.slow
@pytest.mark.parametrize('op', selfcheck.FAST_INFERENCE_OPERATORS)
def test_self_check_rejects_a_perturbed_inference_operator(op):
    """A wrong float32 inference operator: fast_inference falls back to MXNet's operators (one
    warning naming it) and gives the network's own outputs; the INT8 operator stays
    available."""
    _library_or_skip()
    if not native.fast_inference_available():
        pytest.skip(native.fast_inference_unavailable_reason())
    code = (
        'import mxnet as mx, numpy as np\n'
        'from gluon_resnest import get_model, native\n'
        'from gluon_resnest.deploy import fast_inference\n'
        'print("LOADED", native.load(), native.fast_inference_available())\n'
        'net = get_model("resnest14", classes=10); net.initialize(mx.init.Xavier())\n'
        'x = mx.nd.array(np.random.RandomState(0).uniform(-1, 1, (2, 3, 32, 32)))\n'
        'want = net(x).asnumpy()\n'
        'block = fast_inference(net, x)\n'
        'print("NATIVE", "gluon_resnest_conv" in block._cached_graph[1].tojson())\n'
        'print("DIFF", float(np.abs(block(x).asnumpy() - want).max()))\n')
    proc = _run(code, GLUON_RESNEST_NATIVE_SELFTEST_PERTURB=op)
    assert 'LOADED True False' in proc.stdout
    assert 'NATIVE False' in proc.stdout
    diff = float(proc.stdout.split('DIFF ')[1].split()[0])
    assert diff < 1e-4
    assert f'{op} differs from MXNet' in proc.stderr
    assert proc.stderr.count('fast_inference: float32 inference on oneDNN 3 is unavailable') == 1


@pytest.mark.slow
def test_self_check_survives_a_crashing_operator():
    """An operator that aborts the process takes down only the check's child process."""
    _library_or_skip()
    proc = _run('from gluon_resnest import native\nprint("LOADED", native.load())\n',
                GLUON_RESNEST_NATIVE_SELFTEST_PERTURB='gluon_resnest_sa_gap:crash')
    assert 'LOADED False' in proc.stdout
    assert 'the check process ended (signal 6)' in proc.stderr


def test_fast_inference_falls_back_without_the_library():
    """GLUON_RESNEST_NATIVE=0: fast_inference warns once and runs MXNet's operators (the same
    outputs); strict=True raises."""
    code = (
        'import mxnet as mx, numpy as np\n'
        'from gluon_resnest import get_model, native\n'
        'from gluon_resnest.deploy import fast_inference\n'
        'net = get_model("resnest14", classes=10); net.initialize(mx.init.Xavier())\n'
        'x = mx.nd.array(np.random.RandomState(0).uniform(-1, 1, (2, 3, 32, 32)))\n'
        'want = net(x).asnumpy()\n'
        'block = fast_inference(net, x)\n'
        'print("DIFF", float(np.abs(block(x).asnumpy() - want).max()))\n'
        'try:\n'
        '    fast_inference(net, x, strict=True)\n'
        'except native.NativeBuildError as err:\n'
        '    print("STRICT", err)\n')
    proc = _run(code, GLUON_RESNEST_NATIVE='0')
    assert float(proc.stdout.split('DIFF ')[1].split()[0]) < 1e-4
    assert 'STRICT float32 inference on oneDNN 3 is unavailable' in proc.stdout
    assert proc.stderr.count('fast_inference: float32 inference on oneDNN 3 is unavailable') == 1


def test_self_check_without_the_library():
    """GLUON_RESNEST_NATIVE=0: the check says there is nothing to check (and builds nothing)."""
    proc = _run('import sys\nfrom gluon_resnest.native.selfcheck import main\nsys.exit(main())\n',
                GLUON_RESNEST_NATIVE='0')
    assert proc.stdout.strip() == ('GLUON_RESNEST_NATIVE=0: the operator libraries are disabled, '
                                   'nothing to check')


def test_guards_accept_this_mxnet_and_compiler():
    """The checked build: MXNet 1.9.1 CPU with oneDNN 2.4 (and GCC, where the library builds)."""
    from gluon_resnest.native import guards

    assert guards.library_refusal() is None
    try:
        compiler = native._compiler()
    except native.NativeBuildError:
        pytest.skip('no C++ compiler')
    assert guards.onednn_refusal(compiler) is None


def test_guards_refuse_another_compiler(tmp_path):
    """A compiler that is not GCC (the std::function layout mxnet_bridge.h patches) is refused
    for the library that reaches into MXNet's internals."""
    from gluon_resnest.native import guards

    fake = tmp_path / 'clang++'
    fake.write_text('#!/bin/sh\necho "Debian clang version 14.0.6"\n')
    fake.chmod(0o755)
    assert 'not GCC' in guards.onednn_refusal(str(fake))


def test_without_a_compiler_the_library_says_why():
    """Where no C++ compiler is on PATH (CI runs the suite so), loading reports it and the
    package keeps MXNet's operators."""
    if shutil.which(os.environ.get('CXX', 'g++')) is not None:
        pytest.skip('a C++ compiler is on PATH (.ci/without_compiler.sh removes it)')
    if not native.enabled():
        pytest.skip('GLUON_RESNEST_NATIVE=0')
    assert not native.load()
    assert 'no C++ compiler' in native.fast_inference_unavailable_reason()


def test_guards_refuse_another_mxnet_version(monkeypatch):
    """Another MXNet than the CPU 1.9.1 build the libraries were written for is refused."""
    import mxnet as mx

    from gluon_resnest.native import guards

    monkeypatch.setattr(mx, '__version__', '1.9.0')
    assert 'written for MXNet 1.9.1, this is 1.9.0' in guards.library_refusal()
