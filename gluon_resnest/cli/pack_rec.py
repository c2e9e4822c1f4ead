"""Pack an ImageNet-style image folder (or an im2rec .lst) into RecordIO of RGB JPEGs.

Example:
    python tools/pack_rec.py --root data/digits/train --prefix data/digits_train --workers 2

writes data/digits_train.{rec,idx,lst,classes,skipped.txt}. Unreadable files and folders, and
files reached a second time through symbolic links, are skipped and listed in
PREFIX.skipped.txt; the exit code is 1 when nothing could be packed, 2 on bad input (a bad
key or label in the list, a missing folder), with no output written.
"""
from __future__ import annotations

import logging
import os

from gluon_resnest.data.pack import pack_entries, pack_folder, read_lst
from gluon_resnest.errors import ToolParser, int_in, missing, run_tool

PROG = 'pack_rec'
logger = logging.getLogger(PROG)


def parse_args(argv=None):
    parser = ToolParser(PROG, description=__doc__.split('\n')[0])
    parser.add_argument('--root', help='image folder: ROOT/<class>/**/<image> (with --lst: the '
                        'directory the list paths are relative to; default the list\'s folder)')
    parser.add_argument('--lst', help='im2rec list file (key<TAB>label<TAB>path) instead of '
                        'scanning --root')
    parser.add_argument('--prefix', required=True, help='output path prefix')
    parser.add_argument('--resize', type=int_in(0, 65535), default=0,
                        help='resize the shorter side to this length (0: keep the size)')
    parser.add_argument('--quality', type=int_in(1, 100), default=95,
                        help='JPEG quality of re-encoded images')
    parser.add_argument('--workers', type=int_in(1, 1024), default=os.cpu_count() or 1,
                        help='encoding processes')
    parser.add_argument('--num-classes', type=int_in(1, 10**6),
                        help='with --lst: labels must lie in 0..N-1 (default: any class index)')
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    args = parser.parse_args(argv)
    if not args.root and not args.lst:
        parser.error('give --root (an image folder) or --lst (an im2rec list)')
    return args


def _main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    if args.lst:
        entries = read_lst(args.lst)
        root = args.root or os.path.dirname(os.path.abspath(args.lst))
        if not os.path.isdir(root):
            raise missing('image root is not a directory', root)
        result = pack_entries(entries, root, args.prefix, args.resize, args.quality,
                              args.workers, progress=not args.no_progress,
                              num_classes=args.num_classes, source=args.lst)
    else:
        result = pack_folder(args.root, args.prefix, args.resize, args.quality, args.workers,
                             progress=not args.no_progress)
    logger.info('%s', result.summary())
    if result.skipped:
        logger.info('skipped files and reasons: %s.skipped.txt', args.prefix)
    if result.packed == 0:
        logger.error('nothing could be packed')
        return 1
    return 0


def main(argv=None) -> int:
    """Run the tool; bad input ends with one line on stderr and status 2."""
    return run_tool(PROG, _main, argv)
