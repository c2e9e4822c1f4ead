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
    source.add_argument('--model', help='registered model name (with --params or --pretrained)')
    parser.add_argument('--params', help='save_parameters file for --model')
    parser.add_argument('--pretrained', action='store_true',
                        help='with --model: its published ImageNet weights, downloaded into '
                             'the cache when not there (see tools/download.py)')
    parser.add_argument('--epoch', type=int_in(0, 9999), default=0, help='epoch of the export')


def check_network_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit with a usage error unless ``--model`` comes with one of ``--params`` and
    ``--pretrained``."""
    if args.pretrained and (args.params or not args.model):
        parser.error('--pretrained goes with --model, instead of --params')
    if args.model and not (args.params or args.pretrained):
        parser.error('--model needs --params or --pretrained')


def network_params(args: argparse.Namespace) -> str | None:
    """``--params``, or with ``--pretrained`` the verified published file in the cache
    (downloaded when missing or damaged; :func:`gluon_resnest.weights.fetch`)."""
    if args.pretrained:
        from gluon_resnest.weights import fetch

        return fetch(args.model)
    return args.params
