"""Top-5 classes, with probabilities, of each image, from an export or a model + parameters.

    python tools/predict.py --prefix out/resnest50 cat.jpg dog.png
    python tools/predict.py --model resnest50 --params resnest50.params --classes names.txt x.jpg
    python tools/predict.py --prefix out/resnest50 --json cat.jpg

Each image goes through the paper's evaluation transform (short side resized to
``ceil(crop / 0.875)``, center crop). For an export the crop size and whether the network
normalises by itself come from ``PREFIX-meta.json``, and the class names from
``PREFIX.classes`` when it exists. An image that cannot be read is reported on stderr (the
others are still predicted) and makes the exit status non-zero. ``--json`` prints one JSON
object instead, ``{image: [{"index": i, "class": name, "probability": p}, ...]}``, the same
entries the model server's handler (:mod:`gluon_resnest.deploy.serving`) answers with.
"""
from __future__ import annotations

import json
import logging
import os
import sys

import mxnet as mx

from gluon_resnest.cli import add_network_arguments, check_network_arguments, network_params
from gluon_resnest.deploy import eval_transform, load_class_names, load_image, load_network
from gluon_resnest.deploy.serving import ranked
from gluon_resnest.errors import ToolParser, image_size, int_in, run_tool

PROG = 'predict'


def _main(argv: list[str] | None = None) -> int:
    parser = ToolParser(PROG, description=__doc__.split('\n\n')[0])
    add_network_arguments(parser, 'prefix of an export (tools/export.py)')
    parser.add_argument('--classes', help='file with one class name per line '
                                          '(default: PREFIX.classes when it exists)')
    parser.add_argument('--input-size', type=image_size,
                        help='center crop (default: the export\'s input size, or the '
                             'model\'s evaluation crop)')
    parser.add_argument('--top-k', type=int_in(1, 10**6), default=5, help='classes shown per image')
    parser.add_argument('--json', action='store_true',
                        help='print one JSON object {image: [{index, class, probability}]}')
    parser.add_argument('images', nargs='+', help='image files')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    check_network_arguments(parser, args)
    try:
        net, meta = load_network(args.prefix, args.model, network_params(args), args.epoch)
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
    results = {}
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
        top = ranked(probs, names, args.top_k)
        if args.json:
            results[path] = top
            continue
        print(f'{path}:')
        for rank, entry in enumerate(top, 1):
            label = entry['class'] if names is not None else f'class {entry["index"]}'
            print(f'  {rank}. {label:<30s} {entry["probability"]:.4f}')
    if args.json:
        print(json.dumps(results, indent=2))
    if failed:
        print(f'predict: {failed} of {len(args.images)} images could not be read',
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the tool; bad input ends with one line on stderr and status 2."""
    return run_tool(PROG, _main, argv)
