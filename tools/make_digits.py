"""Write scikit-learn's digits as an image folder with a train/val split (no download).

Example:
    python tools/make_digits.py --out data/digits --size 32
    python tools/pack_rec.py --root data/digits/train --prefix data/digits_train
    python tools/pack_rec.py --root data/digits/val --prefix data/digits_val

The split is stratified and seeded: 1437 train / 360 val images, the same on every run.
"""
from __future__ import annotations

import argparse
import logging
import sys

from gluon_resnest.data.synthetic import write_digits_folder

logger = logging.getLogger('make_digits')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--out', required=True, help='output folder (gets train/ and val/)')
    parser.add_argument('--size', type=int, default=32, help='image side in pixels')
    parser.add_argument('--val-fraction', type=float, default=0.2, help='share of validation')
    parser.add_argument('--seed', type=int, default=0, help='seed of the split')
    args = parser.parse_args(argv)
    if args.size < 8 or not 0 < args.val_fraction < 1:
        parser.error('--size must be >= 8 and --val-fraction in (0, 1)')
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    counts = write_digits_folder(args.out, args.size, args.val_fraction, args.seed)
    logger.info('wrote %d train and %d val images under %s', counts['train'], counts['val'],
                args.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
