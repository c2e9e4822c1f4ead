"""Parameters and GFLOPs (multiply-accumulates of convolutions and FC) per model.

    python tools/complexity.py                       # every registered model, at 224
    python tools/complexity.py --model resnest50 resnetd50 --json

Counted on the symbol graph with shape inference (no weights are allocated). The "+BN" column
adds one multiply-add per BatchNorm output, the convention under which the paper's Table 1
figures come out (ResNeSt-50 5.39, ResNeSt-50-fast 4.34, ResNet-D-50 4.34 GFLOPs).
"""
from __future__ import annotations

import json
import sys

from gluon_resnest import list_models
from gluon_resnest.complexity import PAPER_GFLOPS, model_complexity
from gluon_resnest.constants import DEFAULT_CROP
from gluon_resnest.errors import ToolParser, int_in, run_tool

PROG = 'complexity'


def _main(argv: list[str] | None = None) -> int:
    parser = ToolParser(PROG, description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', nargs='+', default=None,
                        help='model names (default: all registered models)')
    parser.add_argument('--input-size', type=int_in(32, 65536), default=DEFAULT_CROP,
                        help='square input size')
    parser.add_argument('--classes', type=int_in(1, 10**6), default=1000, help='classifier outputs')
    parser.add_argument('--json', action='store_true',
                        help='one JSON object per line: model, params, gflops, ...')
    args = parser.parse_args(argv)
    try:
        rows = [model_complexity(name.lower(), args.input_size, args.classes)
                for name in (args.model or list_models())]
    except ValueError as err:
        print(f'complexity: error: {err}', file=sys.stderr)
        return 2
    if args.json:
        for row in rows:
            print(json.dumps({'model': row['model'], 'params': row['params'],
                              'gflops': round(row['gflops'], 4),
                              'gflops_bn': round(row['gflops_bn'], 4),
                              'input_size': row['input_size']}))
        return 0
    paper = args.input_size == DEFAULT_CROP and args.classes == 1000
    header = f'{"model":<24s} {"params":>12s} {"GFLOPs":>8s} {"+BN":>8s}'
    print(header + (f' {"paper":>6s}' if paper else ''))
    for row in rows:
        line = (f'{row["model"]:<24s} {row["params"]:>12,d} {row["gflops"]:>8.3f} '
                f'{row["gflops_bn"]:>8.3f}')
        if paper:
            ref = PAPER_GFLOPS.get(row['model'])
            line += f' {ref:>6.2f}' if ref is not None else f' {"-":>6s}'
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the tool; bad input ends with one line on stderr and status 2."""
    return run_tool(PROG, _main, argv)
