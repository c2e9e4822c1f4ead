"""Serve an archive of tools/archive_mms.py over HTTP with MXNet Model Server, until Ctrl-C.

    python tools/serve_mms.py model_store/digits.mar --port 8080
    curl -X POST http://127.0.0.1:8080/predictions/digits -T image.png

MMS gathers up to ``--batch-size`` concurrent requests (waiting at most ``--max-batch-delay``
milliseconds) into one forward pass of each worker. Its logs and unpacked archive live in a
temporary folder (``--workdir`` keeps them), removed when the server stops.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import zipfile

from gluon_resnest.deploy.serving import ModelServer
from gluon_resnest.errors import InputError, ToolParser, int_in, missing, run_tool

PROG = 'serve_mms'


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _check_archive(path: str) -> None:
    """Refuse a file that is not a model archive before the server starts."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        names = set()
    if 'MAR-INF/MANIFEST.json' not in names:
        raise InputError('not a model archive (tools/archive_mms.py writes one)', path)
    if not path.endswith('.mar'):
        raise InputError('the model server loads archives named NAME.mar only', path)


def _main(argv: list[str] | None = None) -> int:
    parser = ToolParser(PROG, description=__doc__.split('\n\n')[0])
    parser.add_argument('archive', help='NAME.mar written by tools/archive_mms.py')
    parser.add_argument('--host', default='127.0.0.1', help='address to listen on')
    parser.add_argument('--port', type=int_in(1, 65535), default=8080, help='inference port')
    parser.add_argument('--management-port', type=int_in(1, 65535),
                        help='management port (default: PORT + 1)')
    parser.add_argument('--batch-size', type=int_in(1, 65536), default=8,
                        help='most requests in one forward pass')
    parser.add_argument('--max-batch-delay', type=int_in(0, 3600000), default=20,
                        help='milliseconds to wait for a batch to fill')
    parser.add_argument('--workers', type=int_in(1, 1024), default=1, help='worker processes')
    parser.add_argument('--workdir', help='keep MMS\'s logs and files in this folder')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    if not os.path.isfile(args.archive):
        raise missing('no archive', args.archive)
    _check_archive(args.archive)
    try:
        server = ModelServer(os.path.dirname(os.path.abspath(args.archive)), port=args.port,
                             management_port=args.management_port, host=args.host,
                             workdir=args.workdir)
    except ValueError as err:
        print(f'serve_mms: error: {err}', file=sys.stderr)
        return 2
    # SIGTERM (e.g. from a service manager) stops the server like Ctrl-C does; SIGINT is set
    # too because a shell starting this in the background hands it over ignored.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    try:
        server.start()
        name = server.register(os.path.basename(args.archive), batch_size=args.batch_size,
                               max_batch_delay=args.max_batch_delay, workers=args.workers)
        print(f'serving {name} at http://{args.host}:{args.port}/predictions/{name} '
              f'(batch {args.batch_size}, {args.max_batch_delay} ms, {args.workers} worker(s)); '
              f'Ctrl-C stops', flush=True)
        server.process.wait()
        print(f'serve_mms: error: the server exited:\n{server.log_tail()}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except (OSError, RuntimeError) as err:
        print(f'serve_mms: error: {err}', file=sys.stderr)
        return 1
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the tool; bad input ends with one line on stderr and status 2."""
    return run_tool(PROG, _main, argv)
