"""Export a ResNeSt to MXNet's deployable symbol/params format (plus a meta file).

    python tools/export.py --model resnest50 --params resnest50.params --prefix out/resnest50

writes ``out/resnest50-symbol.json``, ``out/resnest50-0000.params`` and
``out/resnest50-meta.json`` (input size, mean/std, whether normalisation is in the graph). The
files load with ``mx.gluon.SymbolBlock.imports`` and ``mx.mod.Module``; ``tools/predict.py`` and
``tools/evaluate.py`` read the meta file to feed the network correctly. With ``--fast`` the
graph is the float32 CPU inference graph on gluon_resnest's oneDNN 3 operators
(``gluon_resnest.deploy.fast_inference``): faster on CPU, and it needs gluon_resnest's native
libraries wherever it is loaded (``gluon_resnest.deploy.load_exported`` loads them);
``--fast --dtype bfloat16`` exports its bfloat16 variant.
"""
from __future__ import annotations

import logging
import sys

from gluon_resnest import list_models, model_info
from gluon_resnest.deploy import (
    build_network,
    export_network,
    load_class_names,
    read_model_spec,
)
from gluon_resnest.errors import ToolParser, image_size, int_in, run_tool
from gluon_resnest.native import NativeBuildError, loading_note

PROG = 'export'
logger = logging.getLogger('export')


def _main(argv: list[str] | None = None) -> int:
    parser = ToolParser(PROG, description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', required=True, help=f'one of: {", ".join(list_models())}')
    parser.add_argument('--params', help='save_parameters file; without it the network is '
                                         'freshly initialised (random weights)')
    parser.add_argument('--classes', type=int_in(1, 10**6),
                        help='classifier outputs (default: from --params, else 1000)')
    parser.add_argument('--class-names', help='file with one class name per line, copied to '
                                              'PREFIX.classes')
    parser.add_argument('--input-size', type=image_size,
                        help='square input size (default: the model\'s evaluation crop)')
    parser.add_argument('--prefix', required=True, help='output prefix')
    parser.add_argument('--epoch', type=int_in(0, 9999), default=0,
                        help='number in PREFIX-%%04d.params')
    parser.add_argument('--preprocess', action='store_true',
                        help='embed mean/std normalisation: the export takes 0-255 RGB input')
    parser.add_argument('--fast', action='store_true',
                        help='export the float32 CPU inference graph on gluon_resnest\'s oneDNN 3 '
                             'operators (faster on CPU; loading it needs gluon_resnest\'s '
                             'native libraries)')
    parser.add_argument('--no-winograd', action='store_true',
                        help='with --fast: run every convolution direct, the 3x3 ones of '
                             'stride 1 too (by default they run as Winograd F(4x4, 3x3), which '
                             'is faster on CPUs with AVX-512)')
    parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32',
                        help='with --fast: bfloat16 runs the convolutions and feature maps in '
                             'bfloat16 (float32 input and output; needs a CPU with AVX512_BF16 '
                             'or AMX, here and where it is loaded); default float32')
    args = parser.parse_args(argv)
    if args.no_winograd and not args.fast:
        parser.error('--no-winograd applies to the --fast graph only; add --fast')
    if args.dtype == 'bfloat16' and not args.fast:
        parser.error('--dtype bfloat16 applies to the --fast graph only; add --fast')
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        names = load_class_names(args.class_names) if args.class_names else None
        net = build_network(args.model, args.params, args.classes)
        if args.params is None:
            print(f'note: no --params given: exporting a freshly initialised {args.model} '
                  f'(random weights)', file=sys.stderr)
        if names is not None and len(names) != net.classes:
            raise ValueError(f'{args.class_names!r} lists {len(names)} classes but the network '
                             f'has {net.classes} outputs')
        size = args.input_size or model_info(args.model)['eval_crop']
        files = export_network(net, args.prefix, input_size=size, epoch=args.epoch,
                               preprocess=args.preprocess, classes=names,
                               model_name=args.model.lower(),
                               model_kwargs=(read_model_spec(args.params) or {}).get(
                                   'model_kwargs') if args.params else None,
                               fast=args.fast, winograd=not args.no_winograd,
                               dtype=args.dtype)
    except (FileNotFoundError, ValueError, NativeBuildError) as err:
        print(f'export: error: {err}', file=sys.stderr)
        return 2
    for path in files:
        print(path)
    with open(files[0], encoding='utf-8') as handle:
        note = loading_note(handle.read())
    if note:
        print(note, file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the tool; bad input ends with one line on stderr and status 2."""
    return run_tool(PROG, _main, argv)
