"""Launch plan of a multi-host GPU run: the ``horovodrun`` line and what every worker derives.

The plan is arithmetic on the resolved recipe, nothing is started: per-worker batch, learning
rate, warm-up and total iterations for the world size, the ``local_rank -> mx.gpu(i)`` mapping,
the data each host needs, and a wall-clock estimate from the paper's published throughput.

The estimate is deliberately simple and says so in its ``basis`` field: the paper publishes
inference throughput on one V100 at batch 16 (Table 2 at the evaluation crop; Table 1 for the
ResNeSt-50-fast variants at 224). A training step costs about three forward passes (forward,
backward of activations, backward of weights), and the work per image grows with the square of
the crop, so one GPU trains about ``img_s * (eval_crop / train_crop) ** 2 / 3`` images per second;
the plan multiplies that by the number of GPUs (perfect scaling, no data-loading stalls), which
makes it a lower bound on the wall-clock time.
"""
from __future__ import annotations

import os
import shlex
from typing import Any, Sequence

from ..data.sharding import shard_indices
from .schedule import schedule_epoch_size

# ImageNet-1k (ILSVRC 2012), the data set of the paper's recipes.
IMAGENET_TRAIN_IMAGES = 1_281_167
IMAGENET_VAL_IMAGES = 50_000

# Inference images/s on one V100 at batch 16 and the crop it was measured at (paper Tables 1, 2).
# ResNeSt-50 itself has no published figure: it is derived from the 2s1x64d "fast" model (same
# layers, 4.34 GFLOPs, 533.0 img/s) scaled by the GFLOPs ratio 4.34 / 5.39.
PAPER_THROUGHPUT = {
    'resnest50': (533.0 * 4.34 / 5.39, 224, 'Table 1 (2s1x64d, 533.0 img/s) x 4.34/5.39 GFLOPs'),
    'resnest101': (291.3, 256, 'Table 2 (291.3 img/s at 256)'),
    'resnest200': (105.3, 320, 'Table 2 (105.3 img/s at 320)'),
    'resnest269': (51.2, 416, 'Table 2 (51.2 img/s at 416)'),
    'resnetd50': (688.2, 224, 'Table 1 (0s1x64d, 688.2 img/s)'),
    'resnest50_fast_1s1x64d': (617.6, 224, 'Table 1 (617.6 img/s)'),
    'resnest50_fast_2s1x64d': (533.0, 224, 'Table 1 (533.0 img/s)'),
    'resnest50_fast_4s1x64d': (458.3, 224, 'Table 1 (458.3 img/s)'),
    'resnest50_fast_2s2x40d': (481.8, 224, 'Table 1 (481.8 img/s)'),
}

# Local-rank variables of the launchers (horovodrun, Open MPI, MPICH/Intel MPI).
_LOCAL_RANK_ENV = ('HOROVOD_LOCAL_RANK', 'OMPI_COMM_WORLD_LOCAL_RANK', 'MPI_LOCALRANKID')

# A training step taken as this many forward passes.
TRAIN_STEP_FORWARDS = 3.0


def host_names(hosts: int | Sequence[str]) -> list[str]:
    """``hosts`` names as given, or ``host1 .. hostN`` placeholders for a count."""
    if isinstance(hosts, int):
        if hosts < 1:
            raise ValueError(f'--hosts must be positive, got {hosts}')
        return [f'host{i}' for i in range(1, hosts + 1)]
    names = [h.strip() for h in hosts if h.strip()]
    if not names:
        raise ValueError('--hosts names no host')
    if len(set(names)) != len(names):
        raise ValueError(f'--hosts names a host twice: {",".join(names)}')
    return names


def worker_device(local_rank: int, num_gpus: int) -> tuple[str, int]:
    """The device a worker trains on, as ``(kind, index)``: GPU ``local_rank``, or the CPU.

    Raises:
        ValueError: The host has GPUs but fewer than its workers need.
    """
    if num_gpus <= 0:
        return 'cpu', 0
    if local_rank >= num_gpus:
        raise ValueError(f'local rank {local_rank} needs GPU {local_rank}, but this host has '
                         f'{num_gpus}; start at most {num_gpus} workers per host')
    return 'gpu', local_rank


def local_rank_from_env() -> int:
    """This process's rank on its host as its launcher tells it (0 when not launched)."""
    for key in _LOCAL_RANK_ENV:
        if os.environ.get(key):
            return int(os.environ[key])
    return 0


def describe_worker(config: dict[str, Any], rank: int, local_rank: int, num_gpus: int,
                    num_records: int = IMAGENET_TRAIN_IMAGES) -> dict[str, Any]:
    """What one worker of a run derives: device, batch, learning rate and its first shard.

    Uses the functions the trainer itself uses (:func:`worker_device`,
    :func:`~gluon_resnest.data.sharding.shard_indices`), so a launcher environment can be
    checked without starting Horovod or owning the GPUs.
    """
    size = config['world_size']
    if not 0 <= rank < size:
        raise ValueError(f'rank {rank} is outside the world of {size} workers')
    shard = shard_indices(num_records, rank, size, epoch=0, seed=config['seed'])
    batch = config['per_worker_batch_size']
    return {'rank': rank, 'world_size': size, 'local_rank': local_rank,
            'device': '{}({})'.format(*worker_device(local_rank, num_gpus)),
            'per_worker_batch_size': batch, 'lr': config['lr'],
            'steps_per_epoch': len(shard) // batch, 'shard_size': len(shard),
            'shard_head': shard[:4]}


def steps_per_epoch(num_records: int, world_size: int, per_worker_batch: int) -> int:
    """Iterations per epoch of the sharded loader (shards of ``ceil(N / world)``, full batches)."""
    return -(-num_records // world_size) // per_worker_batch


def launch_plan(config: dict[str, Any], hosts: Sequence[str], gpus_per_host: int,
                data_dir: str, run_dir: str, recipe: str, network_interface: str | None = None,
                train_images: int = IMAGENET_TRAIN_IMAGES) -> dict[str, Any]:
    """Everything a ``hosts x gpus_per_host`` run derives, as one JSON-ready dict.

    Args:
        config: The recipe resolved for ``len(hosts) * gpus_per_host`` workers.
        hosts: Host names, in the order ``horovodrun -H`` gets them (ranks follow it).
        gpus_per_host: Workers (one per GPU) on every host.
        data_dir: Folder with the recipe's ``train_rec``/``val_rec`` on every host.
        run_dir: Run directory (shared storage, so ``--resume`` sees every checkpoint).
        recipe: Recipe name or path, as given to the trainer.
        network_interface: NIC for Horovod's traffic (``--network-interface``), if named.
        train_images: Training images (ImageNet-1k by default).
    """
    if gpus_per_host < 1:
        raise ValueError(f'--gpus-per-host must be positive, got {gpus_per_host}')
    world = len(hosts) * gpus_per_host
    if config['world_size'] != world:
        raise ValueError(f'config resolved for {config["world_size"]} workers, plan is for {world}')
    batch = config['per_worker_batch_size']
    steps = steps_per_epoch(train_images, world, batch)
    if steps < 1:
        raise ValueError(f'{train_images} images over {world} workers cannot fill one batch of '
                         f'{batch} per worker')
    epochs = config['epochs']
    command = ['horovodrun', '-np', str(world),
               '-H', ','.join(f'{h}:{gpus_per_host}' for h in hosts)]
    if network_interface:
        command += ['--network-interface', network_interface]
    command += ['python', 'recipes/train.py', '--recipe', recipe, '--data-dir', data_dir,
                '--run-dir', run_dir]
    ranks = [{'rank': h * gpus_per_host + i, 'host': host, 'local_rank': i,
              'cross_rank': h, 'device': '{}({})'.format(*worker_device(i, gpus_per_host))}
             for h, host in enumerate(hosts) for i in range(gpus_per_host)]
    plan = {
        'recipe': recipe, 'model': config['model'], 'hosts': list(hosts),
        'gpus_per_host': gpus_per_host, 'world_size': world,
        'command': shlex.join(command), 'argv': command,
        'global_batch_size': config['global_batch_size'], 'per_worker_batch_size': batch,
        'lr': config['lr'], 'epochs': epochs, 'warmup_epochs': config['warmup_epochs'],
        'train_images': train_images, 'steps_per_epoch': steps,
        # The learning-rate schedule counts epochs as the authors' script does (see
        # schedule.schedule_epoch_size): its warm-up can be a few iterations longer.
        'warmup_iterations': int(round(config['warmup_epochs']
                                       * schedule_epoch_size(train_images, world, batch))),
        'total_iterations': epochs * steps,
        'images_per_worker_per_epoch': steps * batch,
        'train_crop': config['train_crop'], 'eval_crop': config['eval_crop'],
        'amp': config['amp'], 'sync_bn': config['sync_bn'],
        'ranks': ranks,
        'data': {host: {'train_rec': f'{data_dir}/{config["train_rec"]}',
                        'val_rec': f'{data_dir}/{config["val_rec"]}'} for host in hosts},
        'data_note': ('every host needs the whole train and val .rec/.idx: the training shards '
                      'are re-drawn every epoch, so any rank may read any record'),
    }
    plan.update(throughput_estimate(config, world))
    return plan


def throughput_estimate(config: dict[str, Any], world: int) -> dict[str, Any]:
    """Expected training images/s and wall-clock time, or ``None`` where the paper has no figure."""
    entry = PAPER_THROUGHPUT.get(config['model'])
    if entry is None:
        return {'expected_img_per_sec': None, 'estimated_hours': None,
                'basis': f'the paper publishes no throughput for {config["model"]}'}
    img_s, crop, source = entry
    per_gpu = img_s * (crop / config['train_crop']) ** 2 / TRAIN_STEP_FORWARDS
    total = per_gpu * world
    hours = config['epochs'] * IMAGENET_TRAIN_IMAGES / total / 3600
    return {
        'expected_img_per_sec': round(total, 1),
        'expected_img_per_sec_per_gpu': round(per_gpu, 1),
        'estimated_hours': round(hours, 1),
        'basis': (f'V100 inference throughput of {source}, scaled to the train crop '
                  f'{config["train_crop"]} by the pixel ratio, divided by '
                  f'{TRAIN_STEP_FORWARDS:g} for a training step, times {world} GPUs with perfect '
                  f'scaling; a lower bound on time: data loading and communication are not '
                  f'counted'),
    }


def format_plan(plan: dict[str, Any]) -> str:
    """A human-readable summary of :func:`launch_plan`'s result."""
    lines = [
        f'{plan["world_size"]} workers = {len(plan["hosts"])} hosts x '
        f'{plan["gpus_per_host"]} GPUs; recipe {plan["recipe"]} ({plan["model"]})',
        f'command: {plan["command"]}',
        f'batch: {plan["global_batch_size"]} global = {plan["per_worker_batch_size"]} per worker; '
        f'lr {plan["lr"]:g}',
        f'iterations: {plan["steps_per_epoch"]} per epoch, warm-up {plan["warmup_iterations"]}, '
        f'total {plan["total_iterations"]} ({plan["epochs"]} epochs)',
        'devices: local_rank i -> mx.gpu(i) on every host '
        f'(rank = host index * {plan["gpus_per_host"]} + local_rank)',
        f'data: {plan["data_note"]}',
    ]
    if plan['expected_img_per_sec'] is not None:
        lines.append(f'expected: {plan["expected_img_per_sec"]:g} img/s, about '
                     f'{plan["estimated_hours"]:g} h for {plan["epochs"]} epochs')
    lines.append(f'estimate basis: {plan["basis"]}')
    return '\n'.join(lines)

