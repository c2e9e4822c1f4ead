"""Pack an ImageNet-style image folder (or an im2rec .lst) into RecordIO of RGB JPEGs.

Example:
    python tools/pack_rec.py --root data/digits/train --prefix data/digits_train --workers 2

writes data/digits_train.{rec,idx,lst,classes,skipped.txt}. Unreadable files are skipped and
listed in PREFIX.skipped.txt; the exit code is non-zero only when nothing could be packed.
"""
from __future__ import annotations

import argparse
import logging
import os

from gluon_resnest.data.pack import pack_entries, pack_folder, read_lst

logger = logging.getLogger('pack_rec')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--root', help='image folder: ROOT/<class>/**/<image> (with --lst: the '
                        'directory the list paths are relative to; default the list\'s folder)')
    parser.add_argument('--lst', help='im2rec list file (key<TAB>label<TAB>path) instead of '
                        'scanning --root')
    parser.add_argument('--prefix', required=True, help='output path prefix')
    parser.add_argument('--resize', type=int, default=0,
                        help='resize the shorter side to this length (0: keep the size)')
    parser.add_argument('--quality', type=int, default=95, help='JPEG quality of re-encoded images')
    parser.add_argument('--workers', type=int, default=os.cpu_count() or 1,
                        help='encoding processes')
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    args = parser.parse_args(argv)
    if not args.root and not args.lst:
        parser.error('give --root (an image folder) or --lst (an im2rec list)')
    if not 1 <= args.quality <= 100:
        parser.error(f'--quality must be in [1, 100], got {args.quality}')
    if args.resize < 0 or args.workers < 1:
        parser.error('--resize must be >= 0 and --workers >= 1')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    try:
        if args.lst:
            entries = read_lst(args.lst)
            root = args.root or os.path.dirname(os.path.abspath(args.lst))
            if not os.path.isdir(root):
                raise FileNotFoundError(f'image root is not a directory: {root}')
            result = pack_entries(entries, root, args.prefix, args.resize, args.quality,
                                  args.workers, progress=not args.no_progress)
        else:
            result = pack_folder(args.root, args.prefix, args.resize, args.quality, args.workers,
                                 progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as err:
        logger.error('%s', err)
        return 2
    logger.info('%s', result.summary())
    if result.skipped:
        logger.info('skipped files and reasons: %s.skipped.txt', args.prefix)
    if result.packed == 0:
        logger.error('nothing could be packed')
        return 1
    return 0

