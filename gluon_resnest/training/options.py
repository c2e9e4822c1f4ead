"""What a training run is asked to do, resolved before any worker or Horovod starts."""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .recipe import load_recipe, make_recipe, resolve

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3

# (rank, size) variables of the launchers Horovod runs under: horovodrun (Gloo), Open MPI,
# MPICH/Intel MPI. A process started by none of them is taken for a single worker.
_LAUNCH_ENV = (('HOROVOD_RANK', 'HOROVOD_SIZE'), ('OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_SIZE'),
               ('PMI_RANK', 'PMI_SIZE'))


class TrainingError(RuntimeError):
    """A failure that ends the run with a clear message and a given exit code."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class RunOptions:
    """One training run: the recipe with its overrides, and where to read and write.

    Attributes:
        recipe: Recipe name or YAML file.
        overrides: Recipe field -> value (strings are parsed as YAML).
        per_worker_batch_size: When set, the global batch is this times the number of workers.
        data_dir: Folder with the recipe's ``train_rec`` and ``val_rec``.
        run_dir: Output folder.
        resume: Continue the run in ``run_dir`` from its newest loadable checkpoint.
        overwrite: Start a new run in ``run_dir`` even if it holds another run's files
            (deleting them).
        keep_checkpoints: How many of the newest checkpoints to keep.
        export: Export the network (symbol/params) at the end.
        debug_workers: Each rank writes ``workers/rank-N.shard.json`` (its shard of the first
            epoch it trains) and ``workers/rank-N.params.sha256`` (a digest of its final
            parameters), to check that shards are disjoint and ranks end in sync.
        progress_interval: Seconds between two progress lines when stderr is not a terminal
            (on a terminal, rank 0 shows a progress bar).
        elastic: Run under ``horovodrun --min-np/--max-np``: workers may leave and join.
        commit_interval: With ``elastic``, commit the state every this many batches (and at
            the end of every epoch); a lost worker costs at most this many batches.
    """

    recipe: str
    overrides: dict[str, Any] = field(default_factory=dict)
    per_worker_batch_size: int | None = None
    data_dir: str | None = None
    run_dir: str | None = None
    resume: bool = False
    overwrite: bool = False
    keep_checkpoints: int = 2
    export: bool = True
    debug_workers: bool = False
    progress_interval: float = 30.0
    elastic: bool = False
    commit_interval: int = 100


def launch_from_env() -> tuple[int, int]:
    """``(rank, size)`` of this process as its launcher tells it, read before Horovod starts.

    Raises:
        TrainingError: a variable that is not a whole number, or a rank outside
            ``0..size-1``.
    """
    for rank_key, size_key in _LAUNCH_ENV:
        if os.environ.get(size_key):
            values = []
            for key, default in ((rank_key, '0'), (size_key, '1')):
                text = os.environ.get(key) or default
                try:
                    values.append(int(text))
                except ValueError:
                    raise TrainingError(f'environment variable {key}={text!r} is not a whole '
                                        f'number') from None
            rank, size = values
            if size < 1 or not 0 <= rank < size:
                raise TrainingError(f'environment variables {rank_key}={rank} and '
                                    f'{size_key}={size}: the rank must be in 0..size-1')
            return rank, size
    return 0, 1


def check_launcher() -> None:
    """Before training: refuse Horovod's variables for several workers set by hand.

    ``horovodrun`` sets ``HOROVOD_RANK``/``HOROVOD_SIZE`` together with the address of its
    rendezvous; without it Horovod would wait for the other workers and then abort.

    Raises:
        TrainingError: naming the variables.
    """
    rank, size = launch_from_env()
    if (os.environ.get('HOROVOD_SIZE') and size > 1
            and not os.environ.get('HOROVOD_GLOO_RENDEZVOUS_ADDR')
            and not os.environ.get('OMPI_COMM_WORLD_SIZE') and not os.environ.get('PMI_SIZE')):
        raise TrainingError(f'HOROVOD_RANK={rank} and HOROVOD_SIZE={size} are set, but not by '
                            f'horovodrun (no HOROVOD_GLOO_RENDEZVOUS_ADDR): start the workers '
                            f'with horovodrun, or unset them to train on one worker')


def configure_logging(rank: int) -> None:
    """Log INFO on rank 0, WARNING elsewhere, each line prefixed with the rank."""
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, force=True,
                        format=f'%(asctime)s [rank {rank}] %(levelname)s %(message)s')


def resolve_config(options: RunOptions, world_size: int) -> dict[str, Any]:
    """The run's full configuration on ``world_size`` workers (see :func:`resolve`).

    Raises:
        ValueError: Unknown recipe, a bad override, or a batch that does not divide.
    """
    recipe = load_recipe(options.recipe)
    values = dataclasses.asdict(recipe)
    values.update(options.overrides)
    if options.per_worker_batch_size is not None:
        values['global_batch_size'] = options.per_worker_batch_size * world_size
    recipe = make_recipe(values, source=f'recipe {options.recipe!r} with command-line overrides')
    config = resolve(recipe, world_size)
    config['recipe'] = options.recipe
    if options.elastic and config['sync_bn']:
        # Its Horovod operations run inside the network's forward and backward passes, where
        # an elastic run cannot keep each one alone in the engine (see training.elastic).
        raise ValueError('--elastic cannot be combined with sync_bn: train elastically with '
                         'per-worker BatchNorm (sync_bn: false)')
    return config


def check_data(config: dict[str, Any], data_dir: str | None) -> tuple[Path, Path]:
    """The training and validation ``.rec`` files, each checked to have its ``.idx``.

    Raises:
        TrainingError: A folder or file is missing.
    """
    if not data_dir:
        raise TrainingError('--data-dir is required to train')
    root = Path(data_dir)
    if not root.is_dir():
        raise TrainingError(f'data directory {str(root)!r} does not exist')
    paths = []
    for key in ('train_rec', 'val_rec'):
        rec = root / config[key]
        idx = rec.with_suffix('.idx')
        if not rec.is_file():
            raise TrainingError(f'{key}: {str(rec)!r} not found (pack it with tools/pack_rec.py)')
        if not idx.is_file():
            raise TrainingError(f'{key}: index {str(idx)!r} not found next to {rec.name}; '
                                f'the loaders need the .idx written by tools/pack_rec.py')
        paths.append(rec)
    return paths[0], paths[1]
