"""The command-line tools; each module's ``main(argv=None)`` is a console script
(``gluon-resnest-<tool>``) and the body of ``tools/<tool>.py``."""
from __future__ import annotations

import argparse

from gluon_resnest.errors import int_in


def add_network_arguments(parser: argparse.ArgumentParser, prefix_help: str) -> None:
    """The options naming the network a tool runs: an export, or a model and its parameters.

    Check the parsed result with :func:`check_network_arguments`.
    """
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--prefix', help=prefix_help)
    source.add_argument('--model', help='registered model name (with --params)')
    parser.add_argument('--params', help='save_parameters file for --model')
    parser.add_argument('--epoch', type=int_in(0, 9999), default=0, help='epoch of the export')


def check_network_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit with a usage error when ``--model`` comes without ``--params``."""
    if args.model and not args.params:
        parser.error('--model needs --params')
