"""Top-1/top-5 accuracy and images/second of a model on a validation RecordIO file.

    python tools/evaluate.py --model resnest50 --params resnest50.params --rec val.rec
    python tools/evaluate.py --model resnest269 --pretrained --rec val.rec  # published weights
    python tools/evaluate.py --prefix out/resnest50 --rec val.rec        # an export

Uses the paper's evaluation transform (short side resized to ``ceil(crop / 0.875)``, center
crop), at the model's own evaluation crop (``model_info(name)['eval_crop']``) unless
``--eval-crop`` says otherwise. For an export (including a quantized one from
tools/quantize.py) the crop size and the input normalisation come from ``PREFIX-meta.json``: an
export made with ``--preprocess`` is fed 0-255 RGB. Images/second is end-to-end (decoding
included).
"""
from __future__ import annotations

import json
import logging
import sys

import mxnet as mx

from gluon_resnest.cli import add_network_arguments, check_network_arguments, network_params
from gluon_resnest.data import ValLoader
from gluon_resnest.deploy import load_network
from gluon_resnest.errors import ToolParser, image_size, int_in, run_tool
from gluon_resnest.evaluation import evaluate

PROG = 'evaluate'


def _main(argv: list[str] | None = None) -> int:
    parser = ToolParser(PROG, description=__doc__.split('\n\n')[0])
    add_network_arguments(parser, 'prefix of an export (tools/export.py, quantize.py)')
    parser.add_argument('--rec', required=True, help='validation .rec (its .idx beside it)')
    parser.add_argument('--eval-crop', type=image_size,
                        help='center crop (default: the export\'s input size, or the '
                             'model\'s evaluation crop)')
    parser.add_argument('--batch-size', type=int_in(1, 65536), default=32, help='images per batch')
    parser.add_argument('--num-workers', type=int_in(0, 1024), default=2, help='decoding processes')
    parser.add_argument('--gpus', default='', help='GPU ids, e.g. "0,1"; empty: CPU')
    parser.add_argument('--json', action='store_true', help='print the result as JSON')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    check_network_arguments(parser, args)
    try:
        gpus = [int(i) for i in args.gpus.split(',') if i.strip()]
    except ValueError:
        parser.error(f'--gpus takes GPU numbers such as "0,1", got {args.gpus!r}')
    available = mx.context.num_gpus()
    if any(not 0 <= g < available for g in gpus):
        parser.error(f'--gpus {args.gpus}: this machine has {available} GPUs')
    ctx = [mx.gpu(g) for g in gpus] or [mx.cpu()]
    try:
        net, meta = load_network(args.prefix, args.model, network_params(args), args.epoch,
                                 ctx=ctx)
        crop = args.eval_crop or int(meta['input_size'])
        if meta['preprocess']:  # the graph normalises: feed 0-255 RGB
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        else:
            mean, std = meta['mean'], meta['std']
        loader = ValLoader(args.rec, args.batch_size, eval_crop=crop,
                           num_workers=args.num_workers, mean=mean, std=std,
                           num_classes=meta.get('classes'))
    except (FileNotFoundError, ValueError) as err:
        print(f'evaluate: error: {err}', file=sys.stderr)
        return 2
    with loader:
        result = evaluate(net, loader, ctx=ctx, total=len(loader),
                          progress=sys.stderr.isatty())
    result['eval_crop'] = crop
    if args.json:
        print(json.dumps(result))
    else:
        print(f'top-1 {100 * result["top1"]:.2f}%  top-5 {100 * result["top5"]:.2f}%  '
              f'on {result["count"]} images at {crop}x{crop}, '
              f'{result["img_per_sec"]:.1f} images/s')
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the tool; bad input ends with one line on stderr and status 2."""
    return run_tool(PROG, _main, argv)
