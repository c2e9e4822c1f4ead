"""Write scikit-learn's digits as an image folder with a train/val split (no download).

Example:
    python tools/make_digits.py --out data/digits --size 32
    python tools/pack_rec.py --root data/digits/train --prefix data/digits_train
    python tools/pack_rec.py --root data/digits/val --prefix data/digits_val

The split is stratified and seeded: 1437 train / 360 val images, the same on every run.
"""
from __future__ import annotations

import logging
import sys

from gluon_resnest.data.synthetic import write_digits_folder
from gluon_resnest.errors import ToolParser, float_in, int_in, run_tool

PROG = 'make_digits'
logger = logging.getLogger('make_digits')


def _main(argv=None) -> int:
    parser = ToolParser(PROG, description=__doc__.split('\n')[0])
    parser.add_argument('--out', required=True, help='output folder (gets train/ and val/)')
    parser.add_argument('--size', type=int_in(8, 2048), default=32, help='image side in pixels')
    parser.add_argument('--val-fraction', type=float_in(0.0, 1.0), default=0.2,
                        help='share of validation')
    parser.add_argument('--seed', type=int_in(0, 2**32 - 1), default=0, help='seed of the split')
    args = parser.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        parser.error(f'--val-fraction must be in (0, 1), got {args.val_fraction}')
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    counts = write_digits_folder(args.out, args.size, args.val_fraction, args.seed)
    logger.info('wrote %d train and %d val images under %s', counts['train'], counts['val'],
                args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the tool; bad input ends with one line on stderr and status 2."""
    return run_tool(PROG, _main, argv)


if __name__ == '__main__':
    sys.exit(main())
