"""The native operators checked against MXNet's own on this machine before they are trusted.

After a build, and before a process uses the libraries, :func:`verdict` runs every native
operator on small random inputs beside its MXNet formulation (:mod:`.reference`, MXNet's
convolution and quantization operators): forward, backward for the training operators, and each
layout path (N x C x H x W, through the operator-library interface or after a reorder;
oneDNN's nChw16c in place in training; N x H x W x C in place in float32 and INT8 inference).
It runs in a child process (:func:`main`), so that a crash cannot take the caller down.
The verdict is kept beside the build, keyed by the libraries (their sources, flags, compiler,
MXNet version and oneDNN 3 version), the MXNet build and this check, so it runs once per machine.

``GLUON_RESNEST_NATIVE_SELFTEST_PERTURB=NAME`` (``NAME:crash``) makes the operator NAME add one
(128 to a uint8) to an output element (abort): the check must then reject it.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

__all__ = ['FAST_INFERENCE_OPERATORS', 'PERTURB_ENV', 'describe', 'run_checks', 'verdict']

#: Set in the child process: its ``load`` skips the check.
CHILD_ENV = 'GLUON_RESNEST_NATIVE_SELFCHECK'
PERTURB_ENV = 'GLUON_RESNEST_NATIVE_SELFTEST_PERTURB'
#: Operators only :func:`gluon_resnest.deploy.fast_inference` uses: a failure among them keeps
#: the rest of the library.
FAST_INFERENCE_OPERATORS = ('gluon_resnest_conv', 'gluon_resnest_sa_gap_nhwc',
                            'gluon_resnest_sa_sum_nhwc', 'gluon_resnest_sa_attention')
_PREFIX = 'SELFCHECK '
_TIMEOUT = 600


def _cache_key(paths: dict[str, str | None]) -> str:
    import mxnet as mx

    digest = hashlib.sha256()
    with open(os.path.abspath(__file__), 'rb') as handle:
        digest.update(handle.read())
    libmxnet = os.path.join(os.path.dirname(os.path.abspath(mx.__file__)), 'libmxnet.so')
    stat = os.stat(libmxnet) if os.path.exists(libmxnet) else None
    digest.update(f'{mx.__version__}|{stat.st_size if stat else 0}|'
                  f'{stat.st_mtime_ns if stat else 0}'.encode())
    for name in sorted(paths):
        digest.update(f'{name}={paths[name]}'.encode())
    digest.update(os.environ.get(PERTURB_ENV, '').encode())
    return digest.hexdigest()[:16]


def verdict(paths: dict[str, str | None]) -> list[dict[str, Any]]:
    """The failed checks of the libraries ``paths`` (empty when all agree with MXNet): each a
    dict with ``op`` and ``detail``. Runs the child process unless a verdict is cached."""
    folder = os.path.dirname(str(paths['ops']))
    cache = os.path.join(folder, f'selfcheck-{_cache_key(paths)}.json')
    try:
        with open(cache, encoding='utf-8') as handle:
            return list(json.load(handle)['failures'])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    failures, definite = _run_child()
    if definite:
        try:  # best effort: a read-only cache checks again in the next process
            fd, tmp = tempfile.mkstemp(suffix='.json', prefix='.selfcheck-', dir=folder)
            with os.fdopen(fd, 'w', encoding='utf-8') as handle:
                json.dump({'failures': failures}, handle)
            os.replace(tmp, cache)
        except OSError:
            pass
    return failures


def describe(failures: list[dict[str, Any]]) -> str:
    """One line: each failed operator with its first failed case (and how many more)."""
    by_op: dict[str, list[str]] = {}
    for failure in failures:
        by_op.setdefault(failure['op'], []).append(failure['detail'])
    parts = []
    for op, details in by_op.items():
        more = f' (and {len(details) - 1} more cases)' if len(details) > 1 else ''
        parts.append(f'{op} differs from MXNet: {details[0]}{more}')
    return '; '.join(parts)


def _run_child() -> tuple[list[dict[str, Any]], bool]:
    """Run the checks in a child; (failures, whether the verdict may be cached)."""
    # Two OpenMP threads whatever the parent has: the convolutions take their multi-threaded
    # paths (Winograd on few tiles splits its matrix multiply between threads).
    env = dict(os.environ, **{CHILD_ENV: 'child', 'OMP_NUM_THREADS': '2'})
    cmd = [sys.executable, '-c', 'import sys; from gluon_resnest.native.selfcheck import main; '
           'sys.exit(main())']
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False,
                              timeout=_TIMEOUT)
    except subprocess.TimeoutExpired:
        return [{'op': 'all', 'detail': f'the check did not finish in {_TIMEOUT} s'}], False
    failures, started, finished = [], None, False
    for line in proc.stdout.splitlines():
        if not line.startswith(_PREFIX):
            continue
        record = json.loads(line[len(_PREFIX):])
        if record.get('start'):
            started = record['start']
        elif record.get('done'):
            finished = True
        elif not record.get('ok'):
            failures.append({'op': record['op'], 'detail': record['detail']})
    if proc.returncode != 0 or not finished:
        tail = ' '.join((proc.stderr or '').strip().splitlines()[-3:])
        how = f'signal {-proc.returncode}' if proc.returncode < 0 else f'exit {proc.returncode}'
        failures.append({'op': started or 'load',
                         'detail': f'the check process ended ({how}) {tail}'.strip()})
    return failures, True


# ---- the checks, run in the child ----

def _rel_diff(got: Any, want: Any) -> float:
    import numpy as np

    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return float('inf')
    return float(np.abs(got - want).max() / max(1.0, np.abs(want).max()))


class _Report:
    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []

    def compare(self, op: str, got: Any, want: Any, tol: float, what: str) -> None:
        diff = _rel_diff(got, want)
        ok = diff <= tol
        record = {'op': op, 'ok': ok, 'detail': f'{what}: largest difference from MXNet\'s '
                                                f'{diff:.3g} (relative; tolerance {tol:g})'}
        self.results.append(record)
        print(_PREFIX + json.dumps(record), flush=True)


def _sa_library_path(report: _Report) -> None:
    """gluon_resnest_sa_gap / gluon_resnest_sa_sum through the operator-library interface
    (plain layout), forward and backward."""
    import mxnet as mx
    import numpy as np

    from .reference import sa_gap, sa_sum

    rng = np.random.RandomState(0)
    for radix, pool in ((2, False), (4, True), (2, True)):
        shape = (2, radix * 5, 7, 6)
        x = mx.nd.array(rng.normal(size=shape))
        a = mx.nd.array(rng.uniform(0, 1, (2, radix * 5, 1, 1)))
        results = {}
        for native in (True, False):
            xv, av = x.copy(), a.copy()
            xv.attach_grad()
            av.attach_grad()
            with mx.autograd.record():
                if native:
                    g = mx.nd.gluon_resnest_sa_gap(xv, radix=radix)
                    y = mx.nd.gluon_resnest_sa_sum(av, xv, radix=radix, pool=int(pool))
                else:
                    g = sa_gap(mx.nd, xv, radix)
                    y = sa_sum(mx.nd, av, xv, radix, pool)
            head_g = mx.nd.array(np.random.RandomState(1).normal(size=g.shape))
            head_y = mx.nd.array(np.random.RandomState(2).normal(size=y.shape))
            mx.autograd.backward([g, y], [head_g, head_y])
            results[native] = (g.asnumpy(), y.asnumpy(), av.grad.asnumpy(), xv.grad.asnumpy())
        case = f'radix {radix}, pool {int(pool)}, N x C x H x W'
        got, want = results[True], results[False]
        report.compare('gluon_resnest_sa_gap', got[0], want[0], 1e-5, case)
        report.compare('gluon_resnest_sa_sum', got[1], want[1], 1e-5, case)
        report.compare('_backward_gluon_resnest_sa_sum', got[2], want[2], 1e-4,
                       case + ', attention gradient')
        # The input's gradient sums both operators' backward passes.
        report.compare('_backward_gluon_resnest_sa_gap', got[3], want[3], 1e-4,
                       case + ', input gradient (both backward operators)')


def _sa_blocked_path(report: _Report) -> None:
    """The training operators reading oneDNN's nChw16c in place: a hybridized convolution feeds
    them and another takes the weighted sum (so that its gradient also arrives in nChw16c),
    forward and backward, with and without the avd pooling."""
    import mxnet as mx
    import numpy as np

    from .reference import sa_gap, sa_sum

    radix, channels = 2, 16
    rng = np.random.RandomState(3)
    x = mx.nd.array(rng.normal(size=(2, 8, 9, 9)))
    a = mx.nd.array(rng.uniform(0, 1, (2, radix * channels, 1, 1)))
    weight = mx.nd.array(rng.normal(scale=0.3, size=(radix * channels, 8, 3, 3)))
    weight2 = mx.nd.array(rng.normal(scale=0.2, size=(channels, channels, 1, 1)))

    def graph(native: bool, pool: bool) -> mx.sym.Symbol:
        data, atten = mx.sym.var('data'), mx.sym.var('atten')
        conv = mx.sym.Convolution(data, mx.sym.var('weight'), kernel=(3, 3), pad=(1, 1),
                                  num_filter=radix * channels, no_bias=True, name='conv')
        if native:
            g = mx.sym.gluon_resnest_sa_gap(conv, radix=radix)
            y = mx.sym.gluon_resnest_sa_sum(atten, conv, radix=radix, pool=int(pool))
        else:
            g = sa_gap(mx.sym, conv, radix)
            y = sa_sum(mx.sym, atten, conv, radix, pool=pool)
        after = mx.sym.Convolution(y, mx.sym.var('weight2'), kernel=(1, 1),
                                   num_filter=channels, no_bias=True, name='after')
        # y as an output without a gradient of its own: dy is the convolution's, in nChw16c.
        return mx.sym.Group([g, mx.sym.BlockGrad(y), after])

    for pool in (True, False):
        results = {}
        for native in (True, False):
            args = {'data': x, 'atten': a, 'weight': weight, 'weight2': weight2}
            grads = {k: mx.nd.zeros_like(v) for k, v in args.items()}
            exe = graph(native, pool).bind(mx.cpu(), args, args_grad=grads)
            outs = exe.forward(is_train=True)
            heads = [mx.nd.array(np.random.RandomState(4 + i).normal(size=o.shape))
                     for i, o in enumerate(outs)]
            exe.backward(heads)
            results[native] = [o.asnumpy() for o in outs[:2]] + \
                [grads[k].asnumpy() for k in ('atten', 'weight')]
        got, want = results[True], results[False]
        case = f'radix {radix}, pool {int(pool)}, between convolutions (nChw16c)'
        report.compare('gluon_resnest_sa_gap', got[0], want[0], 1e-5, case)
        report.compare('gluon_resnest_sa_sum', got[1], want[1], 1e-5, case)
        report.compare('_backward_gluon_resnest_sa_sum', got[2], want[2], 1e-4,
                       case + ', attention gradient')
        report.compare('_backward_gluon_resnest_sa_gap', got[3], want[3], 1e-4,
                       case + ', convolution weight gradient (both backward operators)')


def _compare_u8(report: _Report, got: Any, want: Any, what: str) -> None:
    """uint8 results: float32 rounding in another order moves at most one step, in few
    elements."""
    import numpy as np

    got, want = np.asarray(got, dtype=np.int64), np.asarray(want, dtype=np.int64)
    diff = np.abs(got - want) if got.shape == want.shape else np.array([np.inf])
    ok = bool(diff.max() <= 1 and diff.mean() < 0.02)
    record = {'op': 'gluon_resnest_sa_sum_u8', 'ok': ok,
              'detail': f'{what}: largest difference from MXNet\'s {float(diff.max()):g} steps, '
                        f'mean {float(diff.mean()):.3g} (tolerance 1 step, mean 0.02)'}
    report.results.append(record)
    print(_PREFIX + json.dumps(record), flush=True)


def _sa_sum_u8(report: _Report) -> None:
    """gluon_resnest_sa_sum_u8 against MXNet's dequantize, multiply, add, quantize (, pool):
    given plain arrays and, where the oneDNN-layout library is loaded, reading the
    N x H x W x C uint8 outputs of MXNet's INT8 convolutions in place."""
    import mxnet as mx
    import numpy as np

    from . import _state
    from .reference import sa_sum_u8

    rng = np.random.RandomState(5)
    for radix, pool in ((2, False), (3, True)):
        shape = (2, 8, 7, 5)
        xs = [mx.nd.array(rng.randint(0, 256, shape), dtype='uint8') for _ in range(radix)]
        ranges = [(mx.nd.array([0.0]), mx.nd.array([rng.uniform(0.5, 3.0)]))
                  for _ in range(radix)]
        logits = rng.normal(size=(shape[0], radix, shape[1]))
        atten = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        atten = mx.nd.array(atten.reshape(shape[0], radix * shape[1], 1, 1))
        out_max = float(np.mean([hi.asscalar() for _, hi in ranges]))
        args = [atten] + [v for pair in ranges for v in pair] + xs
        got = mx.nd.gluon_resnest_sa_sum_u8(*args, radix=radix, max_calib_range=out_max,
                                            pool=int(pool))[0]
        want = sa_sum_u8(mx.nd, atten, ranges, xs, out_max, pool)[0]
        _compare_u8(report, got.asnumpy(), want.asnumpy(),
                    f'radix {radix}, pool {int(pool)}, N x C x H x W')
    if _state['onednn']:
        for radix, pool in ((2, False), (3, True)):
            _sa_sum_u8_nhwc(report, radix, pool)


def _sa_sum_u8_nhwc(report: _Report, radix: int, pool: bool) -> None:
    """The splits straight from MXNet's INT8 convolutions (N x H x W x C, read in place); the
    reference gets them reordered."""
    import mxnet as mx
    import numpy as np
    from mxnet.contrib.quantization import quantize_net_v2
    from mxnet.gluon import nn

    from .reference import sa_sum_u8

    class Splits(nn.HybridBlock):
        def __init__(self) -> None:
            super().__init__(prefix='selfcheck_')
            for r in range(radix):
                self.register_child(nn.Conv2D(16, 1, in_channels=8), f'split{r}')

        def hybrid_forward(self, F, x):  # noqa: N803 - MXNet's convention
            return tuple(F.Activation(c(x), act_type='relu') for c in self._children.values())

    rng = np.random.RandomState(7 + radix)
    mx.random.seed(7)
    net = Splits()
    net.initialize(mx.init.Normal(0.5))
    x = mx.nd.array(rng.normal(size=(2, 8, 7, 5)))
    net.hybridize()
    net(x)
    qnet = quantize_net_v2(net, quantized_dtype='auto', calib_data=[[x]], calib_mode='naive',
                           num_calib_examples=x.shape[0], ctx=mx.cpu(), logger=None)
    internals = mx.sym.Group(qnet(mx.sym.var('data'))).get_internals()
    names = [n for n in internals.list_outputs()
             if n.startswith('quantized_') and n.endswith('_output')]
    if len(names) != radix:
        raise RuntimeError(f'expected {radix} INT8 convolutions in the quantized graph, '
                           f'found {names}')
    xs = [internals[n] for n in names]
    ranges = [internals[n + m] for n in names for m in ('_min', '_max')]
    out_max = 0.6 * radix
    y = mx.sym.gluon_resnest_sa_sum_u8(mx.sym.var('atten'), *ranges, *xs, radix=radix,
                                       max_calib_range=out_max, pool=int(pool))
    atten = mx.nd.array(rng.uniform(0, 1, (2, radix * 16, 1, 1)))
    params = {p.name: p.data() for p in qnet.collect_params().values()}
    exe = mx.sym.Group([y[0]] + xs + ranges).bind(
        mx.cpu(), dict(params, data=x, atten=atten), grad_req='null')
    outs = exe.forward(is_train=False)
    splits = [mx.nd.array(o.asnumpy(), dtype='uint8') for o in outs[1:1 + radix]]
    pairs = [(outs[1 + radix + 2 * r].copy(), outs[2 + radix + 2 * r].copy())
             for r in range(radix)]
    want = sa_sum_u8(mx.nd, atten, pairs, splits, out_max, pool)[0]
    _compare_u8(report, outs[0].asnumpy(), want.asnumpy(),
                f'radix {radix}, pool {int(pool)}, INT8 convolutions\' N x H x W x C in place')


def _fast_inference(report: _Report) -> None:
    """gluon_resnest_conv (direct and Winograd, grouped and strided, with ReLU and residual sum,
    the residual in place or reordered) and the N x H x W x C Split-Attention operators, reading
    each other's layout in place and, given plain arrays, through a reorder."""
    import mxnet as mx
    import numpy as np

    from . import _state
    from .reference import sa_gap, sa_sum

    if not _state['conv_path']:
        return
    rng = np.random.RandomState(6)
    radix, channels = 2, 16
    width = radix * channels
    params = {
        'data': rng.normal(size=(2, 16, 16, 16)),
        'w1': rng.normal(scale=0.25, size=(width, 16, 1, 1)), 'b1': rng.normal(size=(width,)),
        'w2': rng.normal(scale=0.08, size=(width, width, 3, 3)), 'b2': rng.normal(size=(width,)),
        'w3': rng.normal(scale=0.17, size=(width, width, 1, 1)), 'b3': rng.normal(size=(width,)),
        'w4': rng.normal(scale=0.08, size=(16, 8, 3, 3)), 'b4': rng.normal(size=(16,)),
        'w5': rng.normal(scale=0.08, size=(width, 16, 3, 3)), 'b5': rng.normal(size=(width,)),
        'w6': rng.normal(scale=0.08, size=(width, 16, 3, 3)), 'b6': rng.normal(size=(width,)),
        'one': rng.normal(size=(1, 16, 16, 16)),
        'atten': rng.uniform(0, 1, (2, width, 1, 1))}
    params = {k: mx.nd.array(v) for k, v in params.items()}

    def graph(native: bool) -> mx.sym.Symbol:
        v = {k: mx.sym.var(k) for k in params}

        def conv(x, i, kernel, relu, residual=None, stride=1, groups=1):
            pad = (kernel // 2,) * 2
            filters = params[f'w{i}'].shape[0]
            if native:
                inputs = [x, v[f'w{i}'], v[f'b{i}']] + ([residual] if residual is not None
                                                           else [])
                return mx.sym.gluon_resnest_conv(
                    *inputs, kernel=(kernel, kernel), stride=(stride, stride), pad=pad,
                    dilate=(1, 1), num_filter=filters, num_group=groups, relu=int(relu),
                    sum=int(residual is not None),
                    winograd=int(kernel == 3 and stride == 1 and groups == 1))
            y = mx.sym.Convolution(x, v[f'w{i}'], v[f'b{i}'], kernel=(kernel, kernel),
                                   stride=(stride, stride), pad=pad, num_filter=filters,
                                   num_group=groups)
            if residual is not None:
                y = y + residual
            return mx.sym.relu(y) if relu else y

        c1 = conv(v['data'], 1, 1, True)
        c2 = conv(c1, 2, 3, True)
        c3 = conv(c2, 3, 1, True, residual=c1)
        # A grouped convolution whose residual is a plain array (reordered), then a strided one.
        c4 = conv(v['data'], 4, 3, False, residual=v['data'], groups=2)
        c5 = conv(c4, 5, 3, True, stride=2)
        # One image of 16 x 16: 16 Winograd tiles, fewer than a block per thread.
        c6 = conv(v['one'], 6, 3, True)
        if native:
            g = mx.sym.gluon_resnest_sa_gap_nhwc(c3, radix=radix)
            y0 = mx.sym.gluon_resnest_sa_sum_nhwc(v['atten'], c3, radix=radix, pool=0)
            y1 = mx.sym.gluon_resnest_sa_sum_nhwc(v['atten'], c3, radix=radix, pool=1)
        else:
            g = sa_gap(mx.sym, c3, radix)
            y0 = sa_sum(mx.sym, v['atten'], c3, radix)
            y1 = sa_sum(mx.sym, v['atten'], c3, radix, pool=True)
        return mx.sym.Group([c1, c2, c3, c4, c5, c6, g, y0, y1])

    results = {}
    for native in (True, False):
        exe = graph(native).bind(mx.cpu(), dict(params), grad_req='null')
        results[native] = [o.asnumpy() for o in exe.forward(is_train=False)]
    got, want = results[True], results[False]
    names = [('gluon_resnest_conv', 'direct 1x1 with ReLU, plain input', 1e-5),
             ('gluon_resnest_conv', 'Winograd 3x3 with ReLU, N x H x W x C input', 1e-3),
             ('gluon_resnest_conv', 'direct 1x1 with residual sum and ReLU', 1e-3),
             ('gluon_resnest_conv', 'grouped 3x3 with a plain residual', 1e-5),
             ('gluon_resnest_conv', 'direct 3x3, stride 2, with ReLU', 1e-4),
             ('gluon_resnest_conv', 'Winograd 3x3 on 16 tiles, threads splitting its matmul',
              1e-3),
             ('gluon_resnest_sa_gap_nhwc', 'N x H x W x C input', 1e-3),
             ('gluon_resnest_sa_sum_nhwc', 'N x H x W x C input', 1e-3),
             ('gluon_resnest_sa_sum_nhwc', 'N x H x W x C input, pool 1', 1e-3)]
    for (op, what, tol), a, b in zip(names, got, want):
        report.compare(op, a, b, tol, what)
    # Plain inputs (reordered by the operators).
    x = mx.nd.array(rng.normal(size=(2, width, 9, 7)))
    a = params['atten']
    report.compare('gluon_resnest_sa_gap_nhwc',
                   mx.nd.gluon_resnest_sa_gap_nhwc(x, radix=radix).asnumpy(),
                   sa_gap(mx.nd, x, radix).asnumpy(), 1e-5, 'plain input')
    for pool in (False, True):
        report.compare('gluon_resnest_sa_sum_nhwc',
                       mx.nd.gluon_resnest_sa_sum_nhwc(a, x, radix=radix, pool=int(pool))
                       .asnumpy(), sa_sum(mx.nd, a, x, radix, pool=pool).asnumpy(), 1e-5,
                       f'plain input, pool {int(pool)}')
    # The attention from the pooled input, one and two cardinal groups.
    for groups, (n, c, hidden) in ((1, (2, 48, 32)), (2, (1, 64, 32))):
        g = mx.nd.array(rng.uniform(0, 1, (n, c, 1, 1)))
        w1 = mx.nd.array(rng.normal(0, 0.2, (hidden, c // groups, 1, 1)))
        b1 = mx.nd.array(rng.normal(0, 0.2, (hidden,)))
        w2 = mx.nd.array(rng.normal(0, 0.2, (radix * c, hidden // groups, 1, 1)))
        b2 = mx.nd.array(rng.normal(0, 0.2, (radix * c,)))
        h = mx.nd.relu(mx.nd.Convolution(g, w1, b1, kernel=(1, 1), num_filter=hidden,
                                         num_group=groups))
        z = mx.nd.Convolution(h, w2, b2, kernel=(1, 1), num_filter=radix * c, num_group=groups)
        z = mx.nd.softmax(z.reshape((0, groups, radix, -1)), axis=2)
        want = mx.nd.swapaxes(z, 1, 2).reshape((0, -1, 1, 1))
        report.compare('gluon_resnest_sa_attention',
                       mx.nd.gluon_resnest_sa_attention(g, w1, b1, w2, b2, radix=radix,
                                                        cardinality=groups, hidden=hidden)
                       .asnumpy(), want.asnumpy(), 1e-5, f'cardinality {groups}')


def _fast_inference_bf16(report: _Report) -> None:
    """The bfloat16 inference operators (:mod:`.bf16`) against MXNet's float32 operators on the
    same bfloat16-rounded inputs and weights, rounding where they round: after each
    convolution and each weighted sum. Each layout path: the first convolution converting a
    float32 N x C x H x W input, the others reading N x H x W x C bfloat16 in place, and the
    Split-Attention operators given plain bfloat16 arrays."""
    import mxnet as mx
    import numpy as np

    from . import _state, bf16
    from .reference import sa_gap, sa_sum

    if not _state['conv_path'] or bf16.cpu_refusal() is not None:
        return
    rng = np.random.RandomState(7)
    radix, channels = 2, 16
    width = radix * channels

    def rounded(a: np.ndarray) -> mx.nd.NDArray:
        return mx.nd.Cast(mx.nd.Cast(mx.nd.array(a), dtype='bfloat16'), dtype='float32')

    raw = {
        'data': rng.normal(size=(2, 16, 12, 10)),
        'w1': rng.normal(scale=0.25, size=(width, 16, 1, 1)), 'b1': rng.normal(size=(width,)),
        'w2': rng.normal(scale=0.08, size=(width, width, 3, 3)), 'b2': rng.normal(size=(width,)),
        'w3': rng.normal(scale=0.17, size=(width, width, 1, 1)), 'b3': rng.normal(size=(width,)),
        'atten': rng.uniform(0, 1, (2, width, 1, 1))}
    params = {k: (mx.nd.array(v) if k.startswith('b') or k == 'atten' else rounded(v))
              for k, v in raw.items()}

    def graph(native: bool) -> mx.sym.Symbol:
        v = {k: mx.sym.var(k) for k in params}

        def bf(x: mx.sym.Symbol) -> mx.sym.Symbol:
            return mx.sym.Cast(mx.sym.Cast(x, dtype='bfloat16'), dtype='float32')

        def conv(x, i, kernel, relu, residual=None):
            pad = (kernel // 2,) * 2
            if native:
                inputs = [x, v[f'w{i}'], v[f'b{i}']] + ([residual] if residual is not None
                                                           else [])
                # The 3x3 as Winograd on 18 tiles (the split schedule on two threads) with
                # float32 products: as exact as the direct convolution.
                return mx.sym.gluon_resnest_conv_bf16(
                    *inputs, kernel=(kernel, kernel), stride=(1, 1), pad=pad, dilate=(1, 1),
                    num_filter=width, num_group=1, relu=int(relu),
                    sum=int(residual is not None), winograd=2 if kernel == 3 else 0)
            y = mx.sym.Convolution(x, v[f'w{i}'], v[f'b{i}'], kernel=(kernel, kernel),
                                   pad=pad, num_filter=width)
            if residual is not None:
                y = y + residual
            return bf(mx.sym.relu(y) if relu else y)

        c1 = conv(v['data'], 1, 1, True)
        c2 = conv(c1, 2, 3, True)
        c3 = conv(c2, 3, 1, True, residual=c1)
        if native:
            g = mx.sym.gluon_resnest_sa_gap_nhwc_bf16(c3, radix=radix)
            y0 = mx.sym.gluon_resnest_sa_sum_nhwc_bf16(v['atten'], c3, radix=radix, pool=0)
            y1 = mx.sym.gluon_resnest_sa_sum_nhwc_bf16(v['atten'], c3, radix=radix, pool=1)
            outs = [c1, c2, c3, y0, y1]
            return mx.sym.Group([mx.sym.Cast(o, dtype='float32') for o in outs[:3]] + [g] +
                                [mx.sym.Cast(o, dtype='float32') for o in outs[3:]])
        g = sa_gap(mx.sym, c3, radix)
        y0 = bf(sa_sum(mx.sym, v['atten'], c3, radix))
        y1 = bf(sa_sum(mx.sym, v['atten'], c3, radix, pool=True))
        return mx.sym.Group([c1, c2, c3, g, y0, y1])

    results = {}
    for native in (True, False):
        exe = graph(native).bind(mx.cpu(), dict(params), grad_req='null')
        results[native] = [o.asnumpy() for o in exe.forward(is_train=False)]
    # One bfloat16 rounding step is 2**-8 of a value; sums in another order may round the
    # other way, and a rounded input moves the next operator's result by as much.
    tol = 2e-2
    names = [('gluon_resnest_conv_bf16', '1x1 with ReLU, float32 N x C x H x W input'),
             ('gluon_resnest_conv_bf16', '3x3 Winograd (18 tiles, float32 products) with ReLU, '
              'bfloat16 N x H x W x C input'),
             ('gluon_resnest_conv_bf16', '1x1 with residual sum and ReLU'),
             ('gluon_resnest_sa_gap_nhwc_bf16', 'bfloat16 N x H x W x C input'),
             ('gluon_resnest_sa_sum_nhwc_bf16', 'bfloat16 N x H x W x C input'),
             ('gluon_resnest_sa_sum_nhwc_bf16', 'bfloat16 N x H x W x C input, pool 1')]
    for (op, what), a, b in zip(names, results[True], results[False]):
        report.compare(op, a, b, tol, what)
    # Plain bfloat16 inputs (converted by the operators).
    x = rounded(rng.normal(size=(2, width, 9, 7)))
    xb = mx.nd.Cast(x, dtype='bfloat16')
    a = params['atten']
    report.compare('gluon_resnest_sa_gap_nhwc_bf16',
                   mx.nd.gluon_resnest_sa_gap_nhwc_bf16(xb, radix=radix).asnumpy(),
                   sa_gap(mx.nd, x, radix).asnumpy(), tol, 'plain bfloat16 input')
    report.compare('gluon_resnest_sa_sum_nhwc_bf16',
                   mx.nd.Cast(mx.nd.gluon_resnest_sa_sum_nhwc_bf16(a, xb, radix=radix, pool=1),
                              dtype='float32').asnumpy(),
                   sa_sum(mx.nd, a, x, radix, pool=True).asnumpy(), tol,
                   'plain bfloat16 input, pool 1')
    w = params['w2']
    report.compare('gluon_resnest_conv_bf16',
                   mx.nd.Cast(mx.nd.gluon_resnest_conv_bf16(
                       xb, w, params['b2'], kernel=(3, 3), stride=(2, 2), pad=(1, 1),
                       dilate=(1, 1), num_filter=width, num_group=1, relu=0, sum=0),
                       dtype='float32').asnumpy(),
                   mx.nd.Convolution(x, w, params['b2'], kernel=(3, 3), stride=(2, 2),
                                     pad=(1, 1), num_filter=width).asnumpy(), tol,
                   '3x3 stride 2, plain bfloat16 input')
    # Winograd on 50 tiles (blocks of tiles) and on 18 (the split schedule), grouped, with
    # the residual sum; float32 and bfloat16 transform-domain products. Rounding the
    # transformed inputs and weights (up to 100 times an input, summed back with weights up
    # to 8) to bfloat16 costs a few hundredths of the largest output; a wrong transform or
    # schedule costs the whole output.
    for h, w_ in ((18, 17), (12, 10)):
        x = rounded(rng.normal(size=(2, width, h, w_)))
        xb = mx.nd.Cast(x, dtype='bfloat16')
        w = rounded(rng.normal(scale=0.12, size=(width, width // 2, 3, 3)))
        r = rounded(rng.normal(size=(2, width, h, w_)))
        want = mx.nd.relu(mx.nd.Convolution(x, w, params['b2'], kernel=(3, 3), pad=(1, 1),
                                            num_filter=width, num_group=2) + r).asnumpy()
        tiles = 2 * ((h + 3) // 4) * ((w_ + 3) // 4)
        for mode, products, limit in ((2, 'float32', tol), (1, 'bfloat16', 0.1)):
            got = mx.nd.gluon_resnest_conv_bf16(
                xb, w, params['b2'], mx.nd.Cast(r, dtype='bfloat16'), kernel=(3, 3),
                stride=(1, 1), pad=(1, 1), dilate=(1, 1), num_filter=width, num_group=2,
                relu=1, sum=1, winograd=mode)
            report.compare('gluon_resnest_conv_bf16',
                           mx.nd.Cast(got, dtype='float32').asnumpy(), want, limit,
                           f'3x3 Winograd ({tiles} tiles, 2 groups, residual sum), '
                           f'{products} products')


_CHECKS: list[tuple[str, Callable[[_Report], None]]] = [
    ('gluon_resnest_sa_gap, gluon_resnest_sa_sum (N x C x H x W)', _sa_library_path),
    ('gluon_resnest_sa_gap, gluon_resnest_sa_sum (nChw16c)', _sa_blocked_path),
    ('gluon_resnest_sa_sum_u8', _sa_sum_u8),
    ('gluon_resnest_conv', _fast_inference),  # and the N x H x W x C operators
    ('gluon_resnest_conv_bf16', _fast_inference_bf16),  # and the bfloat16 Split-Attention
]


def run_checks() -> list[dict[str, Any]]:
    """Run every check in this process (the libraries loaded); their records."""
    report = _Report()
    for op, check in _CHECKS:
        print(_PREFIX + json.dumps({'start': op}), flush=True)
        try:
            check(report)
        except Exception as err:  # noqa: BLE001 - any failure is the verdict
            record = {'op': op, 'ok': False, 'detail': f'{type(err).__name__}: {err}'}
            report.results.append(record)
            print(_PREFIX + json.dumps(record), flush=True)
    return report.results


def main() -> int:
    """The child: load the libraries without the check, run the checks, print the records."""
    from . import NativeBuildError, enabled, load

    if not enabled():
        print('GLUON_RESNEST_NATIVE=0: the operator libraries are disabled, nothing to check')
        return 0
    os.environ[CHILD_ENV] = 'child'
    try:
        load(required=True)
    except NativeBuildError as err:
        print(f'gluon_resnest.native.selfcheck: error: {err}', file=sys.stderr)
        return 1
    run_checks()
    print(_PREFIX + json.dumps({'done': True}), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
