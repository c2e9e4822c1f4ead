"""Learning-rate and DropBlock schedules of the paper (§4.2, §5.1).

The values are those of the authors' training script (``scripts/gluon/train.py``), which runs
``mx.lr_scheduler.CosineScheduler`` and ``DropBlockScheduler`` from ``resnest.gluon``: same
formulas, same floating-point operations in the same order, so every value is bit-identical.
"""
from __future__ import annotations

import math
from typing import Any


def schedule_epoch_size(num_records: int, world_size: int, per_worker_batch: int) -> int:
    """Iterations per epoch as the learning-rate schedule counts them: ``ceil((N // k) / b)``.

    This is the authors' count, which can exceed the iterations an epoch actually runs (full
    batches of the worker's shard) by one; the schedule is then stretched accordingly and the
    last iteration's rate stays a little above 0 (see docs/training.md).
    """
    if num_records < 1 or world_size < 1 or per_worker_batch < 1:
        raise ValueError(f'need positive sizes, got {num_records} records, {world_size} '
                         f'workers, batch {per_worker_batch}')
    return int(math.ceil((num_records // world_size) / per_worker_batch))


def learning_rate(step: int, steps_per_epoch: int, base_lr: float, epochs: float,
                  warmup_epochs: float = 5.0) -> float:
    """Linear warm-up from 0 over ``warmup_epochs``, then cosine decay to 0 at ``epochs``.

    ``step`` counts iterations from 0; the value is the rate of that iteration, which is MXNet's
    ``CosineScheduler(epochs * steps_per_epoch, base_lr, warmup_steps=warmup_epochs *
    steps_per_epoch, warmup_begin_lr=0)`` at update number ``step + 1`` (an optimizer counts
    its first update as 1, so the first warm-up step already moves the weights).
    """
    if steps_per_epoch < 1:
        raise ValueError(f'steps_per_epoch must be positive, got {steps_per_epoch}')
    total = int(round(epochs * steps_per_epoch))
    warmup = int(round(warmup_epochs * steps_per_epoch))
    t = min(step + 1, total)
    if t < warmup:
        return base_lr * float(t) / float(warmup)
    return base_lr * (1 + math.cos(math.pi * (t - warmup) / max(total - warmup, 1))) / 2


def iteration_lr(config: dict[str, Any], num_records: int, iteration: int) -> float:
    """The learning rate of training iteration ``iteration`` (from 0) of a resolved recipe.

    Args:
        config: A resolved recipe (:func:`~gluon_resnest.training.recipe.resolve`): ``lr`` is
            the rate of the whole global batch, the authors' ``--lr`` times the workers.
        num_records: Training records (N).
        iteration: Iterations done before this one, counted over all epochs.
    """
    epoch_size = schedule_epoch_size(num_records, config['world_size'],
                                     config['per_worker_batch_size'])
    return learning_rate(iteration, epoch_size, config['lr'], config['epochs'],
                         config['warmup_epochs'])


def dropblock_prob(epoch: int, epochs: int, final_prob: float) -> float:
    """DropBlock probability for ``epoch`` (0-based): linear from ~0 to ``final_prob``."""
    return final_prob * min(epoch + 1, epochs) / epochs
