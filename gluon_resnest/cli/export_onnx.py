"""Convert an export (``PREFIX-symbol.json`` + ``PREFIX-%04d.params``) to ONNX.

    python tools/export_onnx.py --prefix out/resnest50 --output out/resnest50.onnx

The ONNX model has a dynamic batch axis and a fixed image size (the export's, from its meta
file, unless ``--input-size`` is given). With ``--verify`` it is run by onnxruntime on random
input and compared with MXNet.
"""
from __future__ import annotations

import logging
import sys

from gluon_resnest.deploy import export_onnx, verify_onnx
from gluon_resnest.errors import ToolParser, image_size, int_in, run_tool

PROG = 'export_onnx'


def _main(argv: list[str] | None = None) -> int:
    parser = ToolParser(PROG, description=__doc__.split('\n\n')[0])
    parser.add_argument('--prefix', required=True, help='prefix of the MXNet export')
    parser.add_argument('--epoch', type=int_in(0, 9999), default=0,
                        help='number in PREFIX-%%04d.params')
    parser.add_argument('--output', required=True, help='ONNX file to write')
    parser.add_argument('--input-size', type=image_size,
                        help='square input size (default: the export\'s, from PREFIX-meta.json)')
    parser.add_argument('--verify', action='store_true',
                        help='compare onnxruntime with MXNet on a random batch of 2')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    try:
        path = export_onnx(args.prefix, args.output, epoch=args.epoch,
                           input_size=args.input_size)
        print(path)
        if args.verify:
            err, scale = verify_onnx(args.prefix, path, epoch=args.epoch,
                                     input_size=args.input_size)
            print(f'onnxruntime vs MXNet: max abs difference {err:.3g} '
                  f'(largest output {scale:.3g})')
    except (FileNotFoundError, ValueError) as err:
        print(f'export_onnx: error: {err}', file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the tool; bad input ends with one line on stderr and status 2."""
    return run_tool(PROG, _main, argv)
