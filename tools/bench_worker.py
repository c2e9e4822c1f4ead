"""Timing worker of ``tools/bench_harness.py``: one framework, one model, driven over stdio.

Run as a script (``python tools/bench_worker.py --framework ours ...``), never imported, so
that the PyTorch worker can run in its own virtualenv where neither MXNet nor ``gluon_resnest``
is installed. The protocol is one JSON object per line:

* on start the worker builds the model, warms it up and prints
  ``{"ready": true, "params": ..., "framework": ...}`` (or ``{"error": ...}`` and exits 1);
* ``{"cmd": "run", "iters": k}`` times ``k`` batches and answers
  ``{"times": [...seconds...], "peak_rss_mib": ...}`` (the worker's max RSS so far);
* ``{"cmd": "latency", "iters": k}`` switches to batch 1 and answers ``{"times": [...]}``;
* ``{"cmd": "quit"}`` ends the worker.

Our ``bfloat16`` row runs the export of ``fast_inference(net, x, dtype='bfloat16')`` where the
installed :func:`gluon_resnest.fast_inference` takes a ``dtype`` and its graph runs on the
native operators, and MXNet's AMP otherwise; its ``setting`` says which.

Every worker draws the same input (numpy seed 0, uniform in [-1, 1]) and runs with the thread
count it was given (``OMP_NUM_THREADS``, set by the driver before start, and each runtime's own
thread setting).

``--task detect`` times GluonCV's Faster R-CNN with FPN (``custom_faster_rcnn_fpn``: frozen
BatchNorm, GluonCV's head sizes and the FPN settings of its COCO ResNeSt detectors, 80 classes,
images resized to ``--input-size``) on the ResNeSt
``--model``: GluonCV's own backbone (``gluoncv``) or ours served by
``gluon_resnest.register_gluoncv(override=True)`` (``ours``); the same weights' initialisers,
hybridized with a static memory plan as GluonCV's training script does. Inference returns the
detections; training is forward, GluonCV's RPN and R-CNN losses, backward and an SGD step on one
synthetic image with two boxes. ``--task detect-features`` times only the detector's feature
extractor (the backbone and the FPN layers, what the override changes): inference, or forward
and backward of the mean of each FPN level for training (GluonCV's frozen BatchNorm).

The ``onnxruntime`` and ``openvino`` workers run an ONNX file of our network (``--onnx``,
written by the driver with :func:`gluon_resnest.deploy.export_onnx`), each at its documented
best setting for CPU inference, which the ready message states (``setting``):

* onnxruntime: CPU execution provider, all graph optimisations, ``--threads`` intra-op threads;
* OpenVINO: the model reshaped to a static batch, latency performance hint, ``--threads``
  inference threads; ``--dtype float32`` sets the inference precision hint to f32,
  ``default`` keeps OpenVINO's default precision (bf16 on CPUs with AMX or AVX-512 BF16),
  ``int8`` first quantizes the ONNX model with NNCF post-training quantization (calibrated on
  random batches of the benchmark's input distribution).
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

FRAMEWORKS = ('ours', 'gluoncv', 'torch', 'onnxruntime', 'openvino')
TASKS = ('classify', 'detect', 'detect-features')
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
    #: How the framework runs, for the report (e.g. precision, graph optimisation, threads).
    setting: str | None = None


def _mxnet_runner(args: argparse.Namespace) -> _Runner:
    import mxnet as mx
    from mxnet import autograd, gluon

    if args.framework == 'gluoncv':
        from gluoncv.model_zoo import get_model
        net = get_model(args.model, classes=args.classes)
    else:
        from gluon_resnest import get_model, native
        # Training as recipes/train.py does on CPU: the native Split-Attention operators and
        # fused BatchNorm+ReLU (get_model(native=True)) when the operator library loads.
        fast = args.mode == 'train' and native.load()
        net = get_model(args.model, classes=args.classes, native=fast)
    net.initialize(mx.init.Xavier(), ctx=mx.cpu())
    runner = _Runner()
    runner.params = int(sum(int(np.prod(p.shape)) for p in net.collect_params().values()
                            if p.grad_req != 'null'))
    state: dict[str, Any] = {}

    inputs: dict[int, tuple[Any, Any]] = {}

    def make_input(batch_size: int) -> None:
        # Each batch size's arrays are made once: a copy of 200,000 elements or more from
        # numpy runs an OpenMP team on this thread, which slows MXNet's engine from then on
        # (gluon_resnest.threads.release_openmp_team); a user's process does not re-create
        # its batches each time it alternates between batch sizes, as this one does.
        if batch_size not in inputs:
            inputs[batch_size] = (mx.nd.array(_batch(batch_size, args.input_size)),
                                  mx.nd.array(_labels(batch_size, args.classes)))
        state['x'], state['y'] = inputs[batch_size]

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
        if args.framework != 'gluoncv':
            runner.setting = ('hybridized, static memory plan' +
                              (', native Split-Attention operators, BatchNorm+ReLU fused'
                               if fast else ''))
        return runner

    if args.framework == 'gluoncv':
        # What a GluonCV user runs: the hybridized, statically planned network.
        net.hybridize(static_alloc=True, static_shape=True)
        model = net
        runner.setting = 'hybridized, static memory plan'
    elif args.dtype == 'int8':
        from gluon_resnest.deploy.quantization import quantize_network
        calib = [mx.nd.array(np.random.RandomState(i).uniform(
            -1, 1, state['x'].shape).astype(np.float32)) for i in range(2)]
        options = dict(json.loads(args.quantize_options or '{}'))
        options.setdefault('calib_mode', 'naive')
        model = quantize_network(net, calib, **options)
        from gluon_resnest.deploy.inference import optimize_for_inference
        model = optimize_for_inference(model, data=state['x'], backend=None)
        from gluon_resnest.native import uses_native
        fused = uses_native(model(mx.sym.var('data')).tojson())
        runner.setting = ('INT8 (oneDNN' + (', native Split-Attention sum' if fused else '') +
                          '), static memory plan')
    elif args.dtype == 'bfloat16':
        fast = _bf16_fast_inference(net, state['x'])
        if fast is not None:
            # As the float32 row: the exported file of fast_inference(dtype='bfloat16').
            model = _exported(fast)
            runner.setting = ('exported, fast_inference(dtype=\'bfloat16\') (bf16 on '
                              'oneDNN 3, native Split-Attention), static memory plan')
        else:
            from mxnet.contrib import amp

            from gluon_resnest.deploy.inference import optimize_for_inference
            net = optimize_for_inference(net, data=state['x'])
            model = amp.convert_hybrid_block(net, target_dtype='bfloat16', ctx=mx.cpu())
            model.hybridize(static_alloc=True, static_shape=True)
            runner.setting = 'bf16 (MXNet AMP on optimize_for_inference), oneDNN fusion'
    else:
        # The deployment path: get_model + fast_inference (oneDNN 3 convolutions and the
        # native Split-Attention in N x H x W x C; optimize_for_inference where those are
        # unavailable), exported and reloaded as a SymbolBlock (the file a user ships).
        from gluon_resnest import native
        from gluon_resnest.deploy.inference import optimize_for_inference
        fast = native.fast_inference_available()
        winograd = False
        if fast:
            from gluon_resnest.deploy.fast_inference import fast_inference
            before = native.onednn_calls()['conv_winograd']
            net = fast_inference(net, state['x'])
            winograd = native.onednn_calls()['conv_winograd'] > before
        else:
            optimize_for_inference(net, data=state['x'])
        model = _exported(net)
        runner.setting = ('exported, ' + ('oneDNN 3 convolutions' +
                                          (' (3x3 as Winograd F(4x4,3x3))' if winograd else '') +
                                          ', native Split-Attention (NHWC)' if fast
                                          else 'oneDNN fusion') + ', static memory plan')
        del net

    def infer() -> Any:
        model(state['x']).wait_to_read()
    runner.step = infer
    runner.set_batch = make_input
    return runner


def _exported(net: Any) -> Any:
    """``net`` exported and reloaded as a statically planned ``SymbolBlock`` (the file a user
    ships)."""
    import mxnet as mx
    from mxnet import gluon

    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, 'model')
        net.export(prefix)
        model = gluon.SymbolBlock.imports(f'{prefix}-symbol.json', ['data'],
                                          f'{prefix}-0000.params', ctx=mx.cpu())
    model.hybridize(static_alloc=True, static_shape=True)
    return model


def _bf16_fast_inference(net: Any, data: Any) -> Any:
    """``fast_inference(net, data, dtype='bfloat16')`` where the native bfloat16 operators
    passed their self-check on this CPU; else None (the caller falls back to MXNet's AMP)."""
    from gluon_resnest import native
    from gluon_resnest.deploy.fast_inference import fast_inference

    if not native.fast_inference_available() or native.bf16.unavailable_reason() is not None:
        return None
    block = fast_inference(net, data, dtype='bfloat16', strict=True)
    return block


#: The FPN settings of GluonCV's ``faster_rcnn_fpn_*_resnest*_coco`` builders (its
#: ``predefined_models.py``), but for the image size.
GLUONCV_FPN_SETTINGS = dict(
    min_stage=2, max_stage=6, nms_thresh=0.5, nms_topk=-1, post_nms=-1, roi_mode='align',
    roi_size=(7, 7), strides=(4, 8, 16, 32, 64), clip=4.14, rpn_channel=256, base_size=16,
    scales=(2, 4, 8, 16, 32), ratios=(0.5, 1, 2), alloc_size=(384, 384), rpn_nms_thresh=0.7,
    rpn_train_pre_nms=12000, rpn_train_post_nms=2000, rpn_test_pre_nms=6000,
    rpn_test_post_nms=1000, rpn_min_size=1, num_sample=512, pos_iou_thresh=0.5,
    pos_ratio=0.25, max_num_gt=100)


def _detector_runner(args: argparse.Namespace) -> _Runner:
    """GluonCV's Faster R-CNN FPN on GluonCV's or our backbone (see the module docstring)."""
    import contextlib

    import mxnet as mx
    from gluoncv.data.batchify import FasterRCNNTrainBatchify
    from gluoncv.data.transforms.presets.rcnn import FasterRCNNDefaultTrainTransform
    from gluoncv.model_zoo.rcnn.faster_rcnn.faster_rcnn import custom_faster_rcnn_fpn
    from mxnet import autograd, gluon

    scope: Any = contextlib.nullcontext()
    if args.framework == 'ours':
        import gluon_resnest
        scope = gluon_resnest.gluoncv_override(dropblock=args.dropblock)
    with scope:
        net = custom_faster_rcnn_fpn([f'class{i}' for i in range(80)], pretrained_base=False,
                                     base_network_name=args.model, short=args.input_size,
                                     max_size=args.input_size, **GLUONCV_FPN_SETTINGS)
    mx.random.seed(0)
    # The backbone as an ImageNet-trained one is scaled (Xavier); GluonCV's layers carry
    # their own initialisers.
    net.initialize(ctx=mx.cpu())
    net.collect_params('resnest_.*').initialize(mx.init.Xavier(), ctx=mx.cpu(),
                                                force_reinit=True)
    x = mx.nd.array(_batch(1, args.input_size))
    net(x)  # completes the deferred initialisation of the FPN and head layers
    runner = _Runner()
    runner.params = int(sum(int(np.prod(p.shape)) for p in net.collect_params().values()
                            if p.grad_req != 'null'))
    net.hybridize(static_alloc=True)
    runner.setting = 'custom_faster_rcnn_fpn, frozen BatchNorm, hybridized, static memory'
    if args.framework == 'ours' and args.dropblock == 'effective':
        runner.setting += ", dropblock='effective' (0.1)"

    def set_batch(batch_size: int) -> None:
        if batch_size != 1:
            raise ValueError('detection runs one image per batch')
    runner.set_batch = set_batch
    if args.task == 'detect-features':
        features = net.features

        def features_infer() -> Any:
            for out in features(x):
                out.wait_to_read()

        def features_train() -> Any:
            with autograd.record():
                losses = [out.mean() for out in features(x)]
            autograd.backward(losses)
            mx.nd.waitall()
        runner.step = features_train if args.mode == 'train' else features_infer
        return runner
    if args.mode == 'infer':
        def infer() -> Any:
            net(x)[2].wait_to_read()
        runner.step = infer
        return runner
    transform = FasterRCNNDefaultTrainTransform(net.short, net.max_size, net, ashape=net.ashape,
                                                multi_stage=True, flip_p=0.0)
    rng = np.random.RandomState(0)
    image = mx.nd.array(rng.randint(0, 256, (args.input_size, args.input_size, 3)),
                        dtype='uint8')
    edge = args.input_size
    boxes = np.array([[0.1 * edge, 0.1 * edge, 0.5 * edge, 0.6 * edge, 0],
                      [0.4 * edge, 0.3 * edge, 0.9 * edge, 0.8 * edge, 1]], dtype='float32')
    batch = FasterRCNNTrainBatchify(net, 1)([transform(image, boxes)])
    data, label, rpn_cls_targets, rpn_box_targets, rpn_box_masks = [
        a.as_in_context(mx.cpu()) for a in batch[:2] + tuple(s[0] for s in batch[2:])]
    trainer = gluon.Trainer(net.collect_train_params(), 'sgd',
                            {'learning_rate': 1e-4, 'momentum': 0.9, 'wd': 1e-4})
    sigmoid_ce = gluon.loss.SigmoidBinaryCrossEntropyLoss(from_sigmoid=False)
    softmax_ce = gluon.loss.SoftmaxCrossEntropyLoss()
    rpn_huber, rcnn_huber = gluon.loss.HuberLoss(rho=1 / 9.), gluon.loss.HuberLoss()

    def train() -> Any:
        with autograd.record():
            (cls_pred, box_pred, _, _, _, rpn_score, rpn_box, _, cls_targets, box_targets,
             box_masks, _) = net(data, label[:, :, :4], label[:, :, 4:5])
            losses = [
                sigmoid_ce(rpn_score.squeeze(axis=-1), rpn_cls_targets, rpn_cls_targets >= 0),
                rpn_huber(rpn_box, rpn_box_targets, rpn_box_masks),
                softmax_ce(cls_pred, cls_targets, cls_targets.expand_dims(-1) >= 0),
                rcnn_huber(box_pred, box_targets, box_masks)]
        autograd.backward(losses)
        trainer.step(1)
        mx.nd.waitall()
    runner.step = train
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
        runner.setting = (f'torch {torch.__version__}, eval + no_grad'
                          f'{", bf16 autocast" if dtype is not None else ""}, '
                          f'{args.threads} threads')
    runner.set_batch = make_input
    return runner


def _onnxruntime_runner(args: argparse.Namespace) -> _Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(args.onnx, options, providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    runner = _Runner()
    runner.params = args.param_count
    runner.setting = (f'onnxruntime {ort.__version__}, CPU provider, ORT_ENABLE_ALL, '
                      f'{args.threads} intra-op threads')
    state: dict[str, Any] = {}

    def make_input(batch_size: int) -> None:
        state['x'] = _batch(batch_size, args.input_size)

    def infer() -> Any:
        return session.run(None, {name: state['x']})
    make_input(args.batch_size)
    runner.step = infer
    runner.set_batch = make_input
    return runner


def _openvino_runner(args: argparse.Namespace) -> _Runner:
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    core = ov.Core()
    source = core.read_model(args.onnx)
    if args.dtype == 'int8':
        import nncf

        shape = (args.batch_size, 3, args.input_size, args.input_size)
        calib = [np.random.RandomState(i).uniform(-1, 1, shape).astype(np.float32)
                 for i in range(2)]
        source.reshape([args.batch_size, 3, args.input_size, args.input_size])
        source = nncf.quantize(source, nncf.Dataset(calib), subset_size=len(calib))
    config = {props.inference_num_threads: args.threads,
              hints.performance_mode: hints.PerformanceMode.LATENCY}
    if args.dtype == 'float32':
        config[hints.inference_precision] = ov.Type.f32
    runner = _Runner()
    runner.params = args.param_count
    state: dict[str, Any] = {}

    def make_input(batch_size: int) -> None:
        # A static shape per batch size, as OpenVINO recommends for CPU; a change recompiles.
        model = source.clone()
        model.reshape([batch_size, 3, args.input_size, args.input_size])
        state['request'] = core.compile_model(model, 'CPU', config).create_infer_request()
        state['x'] = _batch(batch_size, args.input_size)

    def infer() -> Any:
        return state['request'].infer({0: state['x']})
    make_input(args.batch_size)
    compiled = state['request'].get_compiled_model()
    precision = compiled.get_property(hints.inference_precision).get_type_name()
    label = {'float32': 'precision hint f32', 'default': 'default precision',
             'int8': 'INT8 (NNCF post-training quantization), default precision elsewhere'}
    runner.setting = (f'OpenVINO {ov.__version__.split("-")[0]}, {label[args.dtype]} '
                      f'(runs {precision}), latency hint, static batch, '
                      f'{args.threads} threads')
    runner.step = infer
    runner.set_batch = make_input
    return runner


def _export_onnx(args: argparse.Namespace) -> dict[str, Any]:
    """Our network (fresh Xavier weights) as an ONNX file, for the ONNX peers."""
    import mxnet as mx

    from gluon_resnest import get_model
    from gluon_resnest.deploy import export_network, export_onnx

    net = get_model(args.model, classes=args.classes)
    net.initialize(mx.init.Xavier(), ctx=mx.cpu())
    params = sum(int(np.prod(p.shape)) for p in net.collect_params().values()
                 if p.grad_req != 'null')
    prefix = os.path.splitext(args.export_onnx)[0]
    export_network(net, prefix, input_size=args.input_size)
    return {'onnx': export_onnx(prefix, args.export_onnx), 'params': params}


def _time(step: Callable[[], Any], iters: int) -> list[float]:
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


#: The protocol channel: the process's original stdout (see :func:`main`).
_channel: Any = sys.stdout


def _reply(obj: dict[str, Any]) -> None:
    _channel.write(json.dumps(obj) + '\n')
    _channel.flush()


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
    parser.add_argument('--task', choices=TASKS, default='classify')
    parser.add_argument('--dropblock', choices=('gluoncv', 'effective'), default='gluoncv',
                        help='detect*: register_gluoncv(dropblock=...) of our row')
    parser.add_argument('--dtype', choices=('float32', 'int8', 'bfloat16', 'default'),
                        default='float32', help='default: the runtime\'s own (openvino)')
    parser.add_argument('--threads', type=int, default=os.cpu_count() or 1)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--onnx', help='onnxruntime, openvino: ONNX file of our network')
    parser.add_argument('--export-onnx', metavar='FILE',
                        help='write our network to this ONNX file, answer, and exit')
    parser.add_argument('--param-count', type=int, default=0,
                        help='onnxruntime, openvino: trainable parameters of that network')
    parser.add_argument('--quantize-options', default='',
                        help='int8: JSON object of quantize_network keyword arguments')
    args = parser.parse_args(argv)
    # Keep the protocol channel clean: whatever libraries print, from Python (progress bars)
    # or from C, goes to stderr.
    global _channel
    _channel = os.fdopen(os.dup(sys.stdout.fileno()), 'w')
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    if args.export_onnx:
        try:
            _reply(_export_onnx(args))
        except Exception as err:  # noqa: BLE001 - reported to the driver, which fails loudly
            traceback.print_exc()
            _reply({'error': f'{type(err).__name__}: {err}'})
            return 1
        return 0
    try:
        build = {'torch': _torch_runner, 'onnxruntime': _onnxruntime_runner,
                 'openvino': _openvino_runner}.get(args.framework, _mxnet_runner)
        if args.task != 'classify':
            build = _detector_runner
        runner = build(args)
        _time(runner.step, args.warmup)
    except Exception as err:  # noqa: BLE001 - reported to the driver, which fails loudly
        traceback.print_exc()
        _reply({'error': f'{type(err).__name__}: {err}'})
        return 1
    _reply({'ready': True, 'framework': args.framework, 'params': runner.params,
            'setting': getattr(runner, 'setting', None)})
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
    sys.exit(main())
