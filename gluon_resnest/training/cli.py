"""Train a ResNeSt with a paper recipe, on one worker or many with ``horovodrun``.

    python recipes/train.py --recipe resnest50 --print-config
    horovodrun -np 8 -H host1:4,host2:4 python recipes/train.py --recipe resnest50 \\
        --data-dir /data/imagenet-rec --run-dir runs/resnest50

The data directory holds the recipe's ``train_rec`` and ``val_rec`` (``.rec`` + ``.idx``, as
written by ``tools/pack_rec.py``). Rank 0 writes into the run directory: ``run.json`` (the
run's identity), ``config.json``, ``metrics.jsonl`` (one object per epoch), ``curves.png``,
``checkpoints/epoch-NNNN/`` (atomic) and, at the end, ``export/`` (symbol/params); it holds
``run.lock`` while it trains. A directory that holds another run is refused unless ``--resume``
(continue that run, same settings) or ``--overwrite`` (start over) is given. ``--resume``
continues from the newest checkpoint that loads; the run directory must then be visible to
every worker. See docs/errors-and-safety.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from ..errors import ToolParser, float_in, int_in, run_tool
from .options import (
    RunOptions,
    TrainingError,
    check_launcher,
    launch_from_env,
    resolve_config,
)
from .recipe import Recipe, recipe_names

PROG = 'train'
logger = logging.getLogger('gluon_resnest.train')


def build_parser() -> argparse.ArgumentParser:
    """The trainer's command line: run options, then one override flag per recipe field."""
    parser = ToolParser(PROG, description=__doc__.split('\n\n')[0])
    parser.add_argument('--recipe', required=True,
                        help=f'recipe name ({", ".join(recipe_names())}) or a YAML file')
    parser.add_argument('--data-dir', help='folder with the recipe\'s train_rec and val_rec')
    parser.add_argument('--run-dir', help='output folder (config, metrics, checkpoints, export)')
    parser.add_argument('--print-config', action='store_true',
                        help='print the resolved configuration as JSON and exit')
    plan = parser.add_argument_group(
        'launch plan', 'with --plan: print the horovodrun command and what every worker derives '
        'for a multi-host GPU run, and exit')
    plan.add_argument('--plan', action='store_true', help='print the launch plan and exit')
    plan.add_argument('--hosts', default='1',
                      help='number of hosts, or their names separated by commas')
    plan.add_argument('--gpus-per-host', type=int_in(1, 1024), default=8,
                      help='GPUs (workers) per host')
    plan.add_argument('--network-interface', help='NIC for Horovod (horovodrun\'s flag)')
    plan.add_argument('--json', action='store_true', help='print the plan as one JSON object')
    parser.add_argument('--resume', action='store_true',
                        help='continue the run in --run-dir from its newest checkpoint that '
                             'loads (only with the settings it was started with)')
    parser.add_argument('--overwrite', action='store_true',
                        help='start a new run in a --run-dir that holds another run, deleting '
                             'that run\'s files')
    parser.add_argument('--keep-checkpoints', type=int_in(1, 10**6), default=2,
                        help='how many of the newest checkpoints to keep')
    parser.add_argument('--no-export', action='store_true',
                        help='skip the symbol/params export at the end')
    parser.add_argument('--debug-workers', action='store_true',
                        help='each rank writes workers/rank-N.shard.json (its first epoch\'s '
                             'record indices) and workers/rank-N.params.sha256 (a digest of '
                             'its final parameters) into --run-dir')
    parser.add_argument('--progress-interval', type=float_in(0.0), default=30.0, metavar='SECONDS',
                        help='when stderr is not a terminal (horovodrun, a log file), rank 0 '
                             'reports progress as one line per this many seconds instead of '
                             'a progress bar')
    parser.add_argument('--elastic', action='store_true',
                        help='elastic training under horovodrun --min-np/--max-np '
                             '--host-discovery-script: continue when hosts leave or join '
                             '(see docs/multi-host.md)')
    parser.add_argument('--commit-interval', type=int_in(1, 10**9), default=100, metavar='BATCHES',
                        help='with --elastic, commit the training state every this many '
                             'batches and at the end of every epoch')
    group = parser.add_argument_group(
        'recipe overrides', 'each replaces the recipe\'s value (lists as JSON, e.g. [0.5,1])')
    for f in dataclasses.fields(Recipe):
        group.add_argument('--' + f.name.replace('_', '-'), dest=f'set_{f.name}',
                           default=argparse.SUPPRESS, metavar='VALUE',
                           help=f'override {f.name}')
    group.add_argument('--per-worker-batch-size', dest='per_worker_batch_size',
                       type=int_in(1, 65536),
                       default=None,
                       help='set global_batch_size to this times the number of workers')
    return parser


def options_from_args(args: argparse.Namespace) -> RunOptions:
    """The :class:`RunOptions` a parsed command line asks for."""
    return RunOptions(
        recipe=args.recipe,
        overrides={k[4:]: v for k, v in vars(args).items() if k.startswith('set_')},
        per_worker_batch_size=args.per_worker_batch_size, data_dir=args.data_dir,
        run_dir=args.run_dir, resume=args.resume, overwrite=args.overwrite,
        keep_checkpoints=args.keep_checkpoints,
        export=not args.no_export, debug_workers=args.debug_workers,
        progress_interval=args.progress_interval, elastic=args.elastic,
        commit_interval=args.commit_interval)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``recipes/train.py`` and ``gluon-resnest-train``; returns the exit code.

    Bad input ends with one line ``train: error: ...`` on stderr and exit code 2; a diverged
    loss with exit code 3.
    """
    return run_tool(PROG, _main, argv)


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = options_from_args(args)
    if args.plan:
        return _print_plan(args, options)
    try:
        if args.print_config:
            print(json.dumps(resolve_config(options, launch_from_env()[1])))
            return 0
        check_launcher()
        from .loop import train_model  # Horovod is needed only to train

        return train_model(options)
    except TrainingError as err:
        logger.error('%s', err)
        print(f'{PROG}: error: {err}', file=sys.stderr)
        return err.code


def _print_plan(args: argparse.Namespace, options: RunOptions) -> int:
    from .plan import format_plan, host_names, launch_plan

    hosts = host_names(int(args.hosts) if args.hosts.isdigit() else args.hosts.split(','))
    config = resolve_config(options, len(hosts) * args.gpus_per_host)
    plan = launch_plan(config, hosts, args.gpus_per_host,
                       data_dir=args.data_dir or '/data/imagenet-rec',
                       run_dir=args.run_dir or f'runs/{config["model"]}',
                       recipe=args.recipe, network_interface=args.network_interface)
    print(json.dumps(plan) if args.json else format_plan(plan))
    return 0
