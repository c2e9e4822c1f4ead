"""Speed of a ResNeSt (paper Table 2 style) beside GluonCV, PyTorch, onnxruntime and OpenVINO.

Example::

    python tools/benchmark.py --model resnest50 --batch-size 16 --input-size 224 \\
        --compare gluoncv,torch,onnxruntime,openvino

onnxruntime and OpenVINO run an ONNX export of our network (made for the run); OpenVINO adds
three rows: FP32, its default precision (bf16 on CPUs with AMX) and INT8 from NNCF. The last
column of the table states each row's setting.

``--dtype all`` prints one table per precision, each our row against the peers' rows of that
precision (FP32: all of them; bfloat16: PyTorch's autocast and OpenVINO's default precision;
INT8: OpenVINO's NNCF INT8), with images/s at ``--batch-size`` and the batch-1 latency::

    python tools/benchmark.py --model resnest50 --dtype all \\
        --compare gluoncv,torch,onnxruntime,openvino

``--task detect`` times GluonCV's Faster R-CNN with FPN on the model as backbone, ours (served
by ``register_gluoncv(override=True)``) against GluonCV's own with ``--compare gluoncv``, one
image of ``--input-size`` pixels per batch; ``--task detect-features`` times only the backbone
and FPN part of that detector::

    python tools/benchmark.py --task detect --model resnest50 --input-size 512 \\
        --compare gluoncv --repetitions 3 --iters 2
"""
from __future__ import annotations

import json
import logging
import os
import sys

from bench_harness import BenchConfig, format_table, run_benchmark

from gluon_resnest.errors import ToolParser, image_size, int_in, run_tool
from gluon_resnest.registry import list_models

PROG = 'benchmark'
COMPARABLE = ('gluoncv', 'torch', 'onnxruntime', 'openvino')
TASKS = ('classify', 'detect', 'detect-features')
DETECTION_BACKBONES = ('resnest50', 'resnest101')


def _main(argv: list[str] | None = None) -> int:
    parser = ToolParser(PROG, description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='resnest50', help='registered model name')
    parser.add_argument('--batch-size', type=int_in(1, 65536), default=None,
                        help='16; with --task detect*, 1 (the only choice)')
    parser.add_argument('--input-size', type=image_size, default=224)
    parser.add_argument('--mode', choices=('infer', 'train'), default='infer')
    parser.add_argument('--task', choices=TASKS, default='classify',
                        help='detect: GluonCV\'s Faster R-CNN FPN on the model; '
                             'detect-features: its backbone and FPN only')
    parser.add_argument('--dropblock', choices=('gluoncv', 'effective'), default='gluoncv',
                        help='with --task detect*: register_gluoncv(dropblock=...) of our row '
                             '(effective: the DropBlocks of GluonCV\'s 0.1 act in training)')
    parser.add_argument('--dtype', choices=('float32', 'int8', 'bfloat16', 'all'),
                        default='float32',
                        help='our dtype (inference); int8/bfloat16 rows add our float32 row; '
                             'all: one table per precision against the peers\' rows of it')
    parser.add_argument('--compare', default='',
                        help='comma-separated: gluoncv, torch, onnxruntime, openvino (timed '
                             'in the same run)')
    parser.add_argument('--repetitions', type=int_in(1, 1000), default=5,
                        help='alternating rounds; each times --iters batches per framework')
    parser.add_argument('--iters', type=int_in(1, 10**6), default=2, help='timed batches per round')
    parser.add_argument('--latency-iters', type=int_in(0, 10**6), default=5,
                        help='batch-1 runs per latency round, one round per repetition '
                             '(0: skip)')
    parser.add_argument('--threads', type=int_in(1, 1024), default=os.cpu_count() or 1,
                        help='OMP threads of every worker')
    parser.add_argument('--classes', type=int_in(1, 10**6), default=1000)
    parser.add_argument('--int8-variant', action='append', default=[], metavar='JSON',
                        help='with --dtype int8: one INT8 row per use, a JSON object of '
                             'gluon_resnest.deploy.quantize_network keyword arguments, '
                             'e.g. \'{"split_grouped": false}\' (default: one row, defaults)')
    parser.add_argument('--json', action='store_true', help='print the report as JSON')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
    if args.model not in list_models():
        parser.error(f'unknown model {args.model!r}; choose from {", ".join(list_models())}')
    compare = [c.strip() for c in args.compare.split(',') if c.strip()]
    bad = [c for c in compare if c not in COMPARABLE]
    if bad:
        parser.error(f'--compare takes {", ".join(COMPARABLE)}; got {", ".join(bad)}')
    if args.task != 'classify':
        if args.model not in DETECTION_BACKBONES:
            parser.error(f'--task {args.task} takes --model {" or ".join(DETECTION_BACKBONES)} '
                         f'(the ResNeSt backbones of GluonCV\'s custom_rcnn_fpn)')
        if any(c != 'gluoncv' for c in compare):
            parser.error(f'--task {args.task} compares with gluoncv only')
        if args.batch_size not in (None, 1):
            parser.error(f'--task {args.task} runs one image per batch (--batch-size 1)')
        if args.dtype != 'float32':
            parser.error(f'--task {args.task} runs float32')
        args.batch_size = 1
        args.latency_iters = 0
    elif args.batch_size is None:
        args.batch_size = 16
    if args.dropblock != 'gluoncv' and args.task == 'classify':
        parser.error('--dropblock is for --task detect or detect-features')
    onnx_peers = [c for c in compare if c in ('onnxruntime', 'openvino')]
    if onnx_peers and args.mode == 'train':
        parser.error(f'{", ".join(onnx_peers)} time inference only (--mode infer)')
    if args.dtype != 'float32' and args.mode == 'train':
        parser.error('--dtype int8/bfloat16/all is for --mode infer')
    variants = []
    for text in args.int8_variant:
        try:
            variant = json.loads(text)
        except json.JSONDecodeError as err:
            parser.error(f'--int8-variant {text!r} is not JSON: {err}')
        if not isinstance(variant, dict):
            parser.error(f'--int8-variant {text!r} must be a JSON object')
        variants.append(variant)
    if variants and args.dtype not in ('int8', 'all'):
        parser.error('--int8-variant needs --dtype int8 or all')
    config = BenchConfig(model=args.model, batch_size=args.batch_size,
                         input_size=args.input_size, mode=args.mode, dtype=args.dtype,
                         compare=compare, repetitions=args.repetitions, iters=args.iters,
                         latency_iters=args.latency_iters, threads=args.threads,
                         classes=args.classes, int8_variants=variants, task=args.task,
                         dropblock=args.dropblock)
    try:
        report = run_benchmark(config, progress=not args.json)
    except (RuntimeError, FileNotFoundError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report))
        for mode, sub in report.get('modes', {'': report}).items():
            if mode and sub['ratios']:
                print(f'{mode}:')
            _print_ratios(sub)
    return 0


def _print_ratios(report: dict) -> None:
    latency = report.get('latency_ratios', {})
    for name, ratio in report['ratios'].items():
        line = f'ours / {name}: {ratio:.2f}x'
        if name in latency:
            line += f' (batch-1 latency: {latency[name]:.2f}x)'
        print(line)
    for name, ratio in report.get('int8_speedup', {}).items():
        print(f'{name} / ours-float32: {ratio:.2f}x')


def main(argv: list[str] | None = None) -> int:
    """Run the tool; bad input ends with one line on stderr and status 2."""
    return run_tool(PROG, _main, argv)


if __name__ == '__main__':
    sys.exit(main())
