"""Download, verify and cache published ImageNet weights; list what the cache holds.

    python tools/download.py resnest50 resnest50_fast_2s1x64d
    python tools/download.py --all --root /shared/models
    python tools/download.py --list

Files go to GluonCV's cache (``~/.mxnet/models``, ``$MXNET_HOME/models`` when set, or
``--root``) as ``NAME-HASH8.params``, where ``gluon_resnest.get_model(name, pretrained=True)``
and GluonCV find them. A file already cached with the right sha1 is not downloaded again.
``MXNET_GLUON_REPO`` points at a mirror of GluonCV's store, ``GLUON_RESNEST_REPO`` (or
``ENCODING_REPO``) at a mirror of the authors' release.
"""
from __future__ import annotations

import json
import logging

from gluon_resnest import weights
from gluon_resnest.errors import ToolParser, int_in, run_tool

PROG = 'download'


def _list(root: str | None, as_json: bool) -> int:
    rows = weights.cache_listing(root)
    if as_json:
        print(json.dumps({'root': weights.cache_root(root), 'models': rows}))
        return 0
    print(f'cache: {weights.cache_root(root)}')
    header = ('model', 'source', 'file', 'state')
    table = [header] + [(r['name'], r['source'] or '-', r['file'] or '-', r['state'])
                        for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print('  '.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _main(argv: list[str] | None = None) -> int:
    parser = ToolParser(PROG, description=__doc__.split('\n\n')[0])
    parser.add_argument('names', nargs='*', metavar='NAME', help='models whose weights to fetch')
    parser.add_argument('--all', action='store_true', help='every model with published weights')
    parser.add_argument('--root', help='cache folder; without it $MXNET_HOME/models when '
                                       'MXNET_HOME is set, else ~/.mxnet/models')
    parser.add_argument('--list', action='store_true',
                        help='list the published files and their state in the cache (sha1 '
                             'checked), then exit')
    parser.add_argument('--json', action='store_true', help='--list as JSON')
    parser.add_argument('--retries', type=int_in(0, 100), default=2,
                        help='resumptions of an interrupted transfer')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    if args.list:
        if args.names or args.all:
            parser.error('--list takes no model names')
        return _list(args.root, args.json)
    if args.all == bool(args.names):
        parser.error('give model names or --all (not both)')
    names = list(weights.WEIGHTS) if args.all else [name.lower() for name in args.names]
    for name in names:
        weights.published(name, args.root)  # unknown names fail before any download
    for name in names:
        path = weights.fetch(name, root=args.root, retries=args.retries)
        print(f'{name}: {path}')
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the tool; a failed download ends with one line on stderr and status 2."""
    return run_tool(PROG, _main, argv)
