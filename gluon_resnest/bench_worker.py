"""Timing worker of :mod:`gluon_resnest.benchmark`: one framework, one model, driven over stdio.

Run as a script (``python .../bench_worker.py --framework ours ...``), never imported by the
package, so that the PyTorch worker can run in its own virtualenv where neither MXNet nor
``gluon_resnest`` is installed. The protocol is one JSON object per line:

* on start the worker builds the model, warms it up and prints
  ``{"ready": true, "params": ..., "framework": ...}`` (or ``{"error": ...}`` and exits 1);
* ``{"cmd": "run", "iters": k}`` times ``k`` batches and answers
  ``{"times": [...seconds...], "peak_rss_mib": ...}`` (the worker's max RSS so far);
* ``{"cmd": "latency", "iters": k}`` switches to batch 1 and answers ``{"times": [...]}``;
* ``{"cmd": "quit"}`` ends the worker.

Every worker draws the same input (numpy seed 0, uniform in [-1, 1]) and runs with the thread
count it was given (``OMP_NUM_THREADS``, set by the driver before start).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import traceback
from typing import Any, Callable

import numpy as np

FRAMEWORKS = ('ours', 'gluoncv', 'torch')
_TORCH_EXTRA = {'resnest14': [1, 1, 1, 1], 'resnest26': [2, 2, 2, 2]}


def peak_rss_mib() -> float:
    """Max resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _batch(batch_size: int, size: int) -> np.ndarray:
    rng = np.random.RandomState(0)
    return rng.uniform(-1, 1, (batch_size, 3, size, size)).astype(np.float32)


def _labels(batch_size: int, classes: int) -> np.ndarray:
    return np.random.RandomState(1).randint(0, classes, batch_size)


class _Runner:
    """``step()`` runs one batch to completion; ``params`` is the trainable parameter count."""

    step: Callable[[], Any]
    params: int
    set_batch: Callable[[int], None]


def _mxnet_runner(args: argparse.Namespace) -> _Runner:
    import mxnet as mx
    from mxnet import autograd, gluon

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if repo not in sys.path:
        sys.path.insert(0, repo)
    if args.framework == 'gluoncv':
        from gluoncv.model_zoo import get_model
        net = get_model(args.model, classes=args.classes)
    else:
        from gluon_resnest import get_model
        net = get_model(args.model, classes=args.classes)
    net.initialize(mx.init.Xavier(), ctx=mx.cpu())
    runner = _Runner()
    runner.params = int(sum(int(np.prod(p.shape)) for p in net.collect_params().values()
                            if p.grad_req != 'null'))
    state: dict[str, Any] = {}

    def make_input(batch_size: int) -> None:
        state['x'] = mx.nd.array(_batch(batch_size, args.input_size))
        state['y'] = mx.nd.array(_labels(batch_size, args.classes))

    make_input(args.batch_size)
    if args.mode == 'train':
        net.hybridize(static_alloc=True, static_shape=True)
        loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
        trainer = gluon.Trainer(net.collect_params(), 'sgd',
                                {'learning_rate': 1e-3, 'momentum': 0.9, 'wd': 1e-4})

        def step() -> Any:
            x, y = state['x'], state['y']
            with autograd.record():
                loss = loss_fn(net(x), y)
            loss.backward()
            trainer.step(x.shape[0])
            loss.wait_to_read()
            mx.nd.waitall()
        runner.step = step
        runner.set_batch = make_input
        return runner

    if args.framework == 'gluoncv':
        # What a GluonCV user runs: the hybridized, statically planned network.
        net.hybridize(static_alloc=True, static_shape=True)
        model = net
    elif args.dtype == 'int8':
        from gluon_resnest.deploy.quantization import quantize_network
        calib = [mx.nd.array(np.random.RandomState(i).uniform(
            -1, 1, state['x'].shape).astype(np.float32)) for i in range(2)]
        options = dict(json.loads(args.quantize_options or '{}'))
        options.setdefault('calib_mode', 'naive')
        model = quantize_network(net, calib, **options)
        from gluon_resnest.deploy.inference import optimize_for_inference
        model = optimize_for_inference(model, data=state['x'], backend=None)
    elif args.dtype == 'bfloat16':
        from mxnet.contrib import amp

        from gluon_resnest.deploy.inference import optimize_for_inference
        net = optimize_for_inference(net, data=state['x'])
        model = amp.convert_hybrid_block(net, target_dtype='bfloat16', ctx=mx.cpu())
        model.hybridize(static_alloc=True, static_shape=True)
    else:
        # The deployment path: get_model + optimize_for_inference, exported and reloaded as a
        # SymbolBlock (the file a user ships).
        from gluon_resnest.deploy.inference import optimize_for_inference
        optimize_for_inference(net, data=state['x'])
        with tempfile.TemporaryDirectory() as tmp:
            prefix = os.path.join(tmp, 'model')
            net.export(prefix)
            model = gluon.SymbolBlock.imports(f'{prefix}-symbol.json', ['data'],
                                              f'{prefix}-0000.params', ctx=mx.cpu())
        model.hybridize(static_alloc=True, static_shape=True)
        del net

    def infer() -> Any:
        model(state['x']).wait_to_read()
    runner.step = infer
    runner.set_batch = make_input
    return runner


def _torch_runner(args: argparse.Namespace) -> _Runner:
    import resnest.torch as resnest_torch
    import torch

    torch.set_num_threads(args.threads)
    builder = getattr(resnest_torch, args.model, None)
    if builder is not None:
        net = builder(pretrained=False, num_classes=args.classes)
    elif args.model in _TORCH_EXTRA:
        # Rows GluonCV has and the authors' package lacks, built from its own ResNet class.
        from resnest.torch.resnet import Bottleneck, ResNet
        net = ResNet(Bottleneck, _TORCH_EXTRA[args.model], radix=2, groups=1,
                     bottleneck_width=64, deep_stem=True, stem_width=32, avg_down=True,
                     avd=True, avd_first=False, num_classes=args.classes)
    else:
        raise ValueError(f'resnest.torch has no model {args.model!r}')
    runner = _Runner()
    runner.params = int(sum(p.numel() for p in net.parameters() if p.requires_grad))
    state: dict[str, Any] = {}

    def make_input(batch_size: int) -> None:
        state['x'] = torch.from_numpy(_batch(batch_size, args.input_size))
        state['y'] = torch.from_numpy(_labels(batch_size, args.classes))

    make_input(args.batch_size)
    if args.mode == 'train':
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
        loss_fn = torch.nn.CrossEntropyLoss()

        def step() -> Any:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(state['x']), state['y'])
            loss.backward()
            opt.step()
        runner.step = step
    else:
        net.eval()
        dtype = {'bfloat16': torch.bfloat16}.get(args.dtype)

        def infer() -> Any:
            with torch.no_grad():
                if dtype is not None:
                    with torch.autocast('cpu', dtype=dtype):
                        net(state['x'])
                else:
                    net(state['x'])
        runner.step = infer
    runner.set_batch = make_input
    return runner


def _time(step: Callable[[], Any], iters: int) -> list[float]:
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def _reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + '\n')
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """Serve timing requests on stdin/stdout until ``quit`` or end of input."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--framework', choices=FRAMEWORKS, required=True)
    parser.add_argument('--model', required=True)
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--input-size', type=int, default=224)
    parser.add_argument('--classes', type=int, default=1000)
    parser.add_argument('--mode', choices=('infer', 'train'), default='infer')
    parser.add_argument('--dtype', choices=('float32', 'int8', 'bfloat16'), default='float32')
    parser.add_argument('--threads', type=int, default=os.cpu_count() or 1)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--quantize-options', default='',
                        help='int8: JSON object of quantize_network keyword arguments')
    args = parser.parse_args(argv)
    # Keep the protocol channel clean: libraries may print to stdout.
    channel = os.fdopen(os.dup(sys.stdout.fileno()), 'w')
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = channel
    try:
        runner = _torch_runner(args) if args.framework == 'torch' else _mxnet_runner(args)
        _time(runner.step, args.warmup)
    except Exception as err:  # noqa: BLE001 - reported to the driver, which fails loudly
        traceback.print_exc()
        _reply({'error': f'{type(err).__name__}: {err}'})
        return 1
    _reply({'ready': True, 'framework': args.framework, 'params': runner.params})
    batch = args.batch_size
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        cmd = request.get('cmd')
        if cmd == 'quit':
            break
        try:
            if cmd == 'run':
                if batch != args.batch_size:
                    batch = args.batch_size
                    runner.set_batch(batch)
                    _time(runner.step, 1)
                times = _time(runner.step, int(request.get('iters', 1)))
                _reply({'times': times, 'peak_rss_mib': peak_rss_mib()})
            elif cmd == 'latency':
                if batch != 1:
                    batch = 1
                    runner.set_batch(1)
                    _time(runner.step, max(args.warmup, 1))
                _reply({'times': _time(runner.step, int(request.get('iters', 1)))})
            else:
                _reply({'error': f'unknown command {cmd!r}'})
        except Exception as err:  # noqa: BLE001 - reported to the driver, which fails loudly
            traceback.print_exc()
            _reply({'error': f'{type(err).__name__}: {err}'})
    return 0


if __name__ == '__main__':
    # Run as a file: drop the package folder from sys.path so that its modules (data, models,
    # ...) cannot shadow top-level packages of the worker's environment.
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)
    sys.exit(main())
