"""Top-5 classes, with probabilities, of each image, from an export or a model + parameters.

    python tools/predict.py --prefix out/resnest50 cat.jpg dog.png
    python tools/predict.py --model resnest50 --params resnest50.params --classes names.txt x.jpg

Each image goes through the paper's evaluation transform (short side resized to
``ceil(crop / 0.875)``, center crop). For an export the crop size and whether the network
normalises by itself come from ``PREFIX-meta.json``, and the class names from
``PREFIX.classes`` when it exists. An image that cannot be read is reported on stderr (the
others are still predicted) and makes the exit status non-zero.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import mxnet as mx
import numpy as np

try:
    import gluon_resnest  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gluon_resnest.deploy import eval_transform, load_class_names, load_image, load_network
from gluon_resnest.errors import ToolParser, image_size, int_in, run_tool

PROG = 'predict'


def _main(argv: list[str] | None = None) -> int:
    parser = ToolParser(PROG, description=__doc__.split('\n\n')[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--prefix', help='prefix of an export (tools/export.py)')
    source.add_argument('--model', help='registered model name (with --params)')
    parser.add_argument('--params', help='save_parameters file for --model')
    parser.add_argument('--epoch', type=int_in(0, 9999), default=0, help='epoch of the export')
    parser.add_argument('--classes', help='file with one class name per line '
                                          '(default: PREFIX.classes when it exists)')
    parser.add_argument('--input-size', type=image_size,
                        help='center crop (default: the export\'s, or 224 with --model)')
    parser.add_argument('--top-k', type=int_in(1, 10**6), default=5, help='classes shown per image')
    parser.add_argument('images', nargs='+', help='image files')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    if args.model and not args.params:
        parser.error('--model needs --params')
    try:
        net, meta = load_network(args.prefix, args.model, args.params, args.epoch)
        names_file = args.classes
        if names_file is None and args.prefix and meta.get('class_names'):
            names_file = os.path.join(os.path.dirname(args.prefix), meta['class_names'])
        elif names_file is None and args.prefix and os.path.isfile(f'{args.prefix}.classes'):
            names_file = f'{args.prefix}.classes'
        names = load_class_names(names_file) if names_file else None
    except (FileNotFoundError, ValueError) as err:
        print(f'predict: error: {err}', file=sys.stderr)
        return 2
    crop = int(args.input_size or meta['input_size'])
    mean, std = (None, None) if meta['preprocess'] else (meta['mean'], meta['std'])
    failed = 0
    for path in args.images:
        try:
            data = eval_transform(load_image(path), crop, mean, std)
        except (FileNotFoundError, ValueError) as err:
            print(f'predict: error: {err}', file=sys.stderr)
            failed += 1
            continue
        probs = mx.nd.softmax(net(data)).asnumpy()[0]
        if names is not None and len(names) != len(probs):
            print(f'predict: error: {len(names)} class names for {len(probs)} outputs',
                  file=sys.stderr)
            return 2
        print(f'{path}:')
        for rank, index in enumerate(np.argsort(-probs, kind='stable')[:args.top_k], 1):
            label = names[index] if names is not None else f'class {index}'
            print(f'  {rank}. {label:<30s} {probs[index]:.4f}')
    if failed:
        print(f'predict: {failed} of {len(args.images)} images could not be read',
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the tool; bad input ends with one line on stderr and status 2."""
    return run_tool(PROG, _main, argv)


if __name__ == '__main__':
    sys.exit(main())
