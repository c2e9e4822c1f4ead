"""Top-1/top-5 accuracy and images/second of a model on a validation RecordIO file.

    python tools/evaluate.py --model resnest50 --params resnest50.params --rec val.rec
    python tools/evaluate.py --prefix out/resnest50 --rec val.rec        # an export

Uses the paper's evaluation transform (short side resized to ``ceil(crop / 0.875)``, center
crop). For an export (including a quantized one from tools/quantize.py) the crop size and the
input normalisation come from ``PREFIX-meta.json``: an export made with ``--preprocess`` is fed
0-255 RGB. Images/second is end-to-end (decoding included).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

import mxnet as mx

from gluon_resnest.cli import add_network_arguments, check_network_arguments
from gluon_resnest.data import ValLoader
from gluon_resnest.deploy import load_network
from gluon_resnest.evaluation import evaluate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_network_arguments(parser, 'prefix of an export (tools/export.py, quantize.py)')
    parser.add_argument('--rec', required=True, help='validation .rec (its .idx beside it)')
    parser.add_argument('--eval-crop', type=int,
                        help='center crop (default: the export\'s input size, or the '
                             'model\'s evaluation crop)')
    parser.add_argument('--batch-size', type=int, default=32, help='images per batch')
    parser.add_argument('--num-workers', type=int, default=2, help='decoding processes')
    parser.add_argument('--gpus', default='', help='GPU ids, e.g. "0,1"; empty: CPU')
    parser.add_argument('--json', action='store_true', help='print the result as JSON')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    check_network_arguments(parser, args)
    ctx = [mx.gpu(int(i)) for i in args.gpus.split(',') if i.strip()] or [mx.cpu()]
    try:
        net, meta = load_network(args.prefix, args.model, args.params, args.epoch, ctx=ctx)
        crop = args.eval_crop or int(meta['input_size'])
        if meta['preprocess']:  # the graph normalises: feed 0-255 RGB
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        else:
            mean, std = meta['mean'], meta['std']
        loader = ValLoader(args.rec, args.batch_size, eval_crop=crop,
                           num_workers=args.num_workers, mean=mean, std=std)
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

