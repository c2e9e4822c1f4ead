"""Quantize an exported ResNeSt to INT8 for CPU inference (oneDNN), calibrated on a .rec file.

Example::

    python tools/quantize.py --prefix runs/demo/export/resnest --calib-rec val.rec \\
        --output runs/demo/export/resnest-int8

The output loads with ``gluon_resnest.deploy.load_exported('OUT')`` (and ``tools/predict.py``,
``tools/evaluate.py``, the model server); ``OUT-meta.json`` is the source's meta with
``quantized: true``. It holds MXNet's operators only: plain MXNet loads it
(``mx.gluon.SymbolBlock.imports``, ``mx.mod.Module``). With ``--native`` each Split-Attention
sum runs as one gluon_resnest native operator (faster): such an export needs gluon_resnest and
its native libraries (built with the C++ compiler) wherever it is loaded, which
``gluon_resnest.deploy.load_exported`` loads; the meta file lists the operators
(``native_operators``).
"""
from __future__ import annotations

import logging
import sys

import mxnet as mx

from gluon_resnest.deploy.quantization import CALIB_MODES, quantize_export
from gluon_resnest.errors import ToolParser, int_in, run_tool
from gluon_resnest.native import NativeBuildError, loading_note

PROG = 'quantize'


def _main(argv: list[str] | None = None) -> int:
    parser = ToolParser(PROG, description=__doc__.splitlines()[0])
    parser.add_argument('--prefix', required=True, help='FP32 export prefix (PREFIX-symbol.json)')
    parser.add_argument('--epoch', type=int_in(0, 9999), default=0,
                        help='number of the params file')
    parser.add_argument('--calib-rec', required=True, help='RecordIO file of calibration images')
    parser.add_argument('--output', required=True, help='prefix of the INT8 export')
    parser.add_argument('--calib-mode', choices=CALIB_MODES, default='naive')
    parser.add_argument('--num-calib-examples', type=int_in(1, 10**7), default=256)
    parser.add_argument('--batch-size', type=int_in(1, 65536), default=32)
    parser.add_argument('--quantized-dtype', choices=('auto', 'int8', 'uint8'), default='auto')
    parser.add_argument('--exclude', default='',
                        help='comma-separated substrings of layer names kept in FP32')
    parser.add_argument('--no-split-grouped', dest='split_grouped', action='store_false',
                        help='keep grouped convolutions grouped (and FP32) instead of '
                             'rewriting them as ungrouped INT8 convolutions')
    parser.add_argument('--native', action='store_true',
                        help="run each Split-Attention sum as gluon_resnest's native operator "
                             '(faster; loading the export then needs gluon_resnest and its '
                             'native libraries)')
    parser.add_argument('--num-workers', type=int_in(0, 1024), default=2, help='decoding processes')
    args = parser.parse_args(argv)
    if args.native and (args.quantized_dtype == 'int8' or not args.split_grouped):
        parser.error('--native needs uint8 activations and split grouped convolutions: drop '
                     '--quantized-dtype int8 and --no-split-grouped')
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
    exclude = [e.strip() for e in args.exclude.split(',') if e.strip()]
    try:
        symbol_file, params_file = quantize_export(
            args.prefix, args.calib_rec, args.output, epoch=args.epoch,
            calib_mode=args.calib_mode, num_calib_examples=args.num_calib_examples,
            batch_size=args.batch_size, quantized_dtype=args.quantized_dtype,
            exclude_layers_match=exclude, num_workers=args.num_workers,
            split_grouped=args.split_grouped, native=args.native)
    except NativeBuildError as err:
        raise ValueError(f'--native: {err}') from None
    except mx.base.MXNetError as err:
        if 'Expect int8 when data_min < 0' not in str(err):
            raise
        raise ValueError('--quantized-dtype uint8: a quantized layer reads negative values '
                         '(e.g. the normalised input image); use --quantized-dtype auto '
                         '(uint8 where the values are non-negative) or int8') from None
    print(f'wrote {symbol_file} and {params_file}')
    with open(symbol_file, encoding='utf-8') as handle:
        note = loading_note(handle.read())
    if note:
        print(note, file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the tool; bad input ends with one line on stderr and status 2."""
    return run_tool(PROG, _main, argv)
