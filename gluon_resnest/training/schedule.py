"""Learning-rate and DropBlock schedules of the paper (§4.2, §5.1)."""
from __future__ import annotations

import math


def learning_rate(step: int, steps_per_epoch: int, base_lr: float, epochs: float,
                  warmup_epochs: float = 5.0) -> float:
    """Linear warm-up from 0 over ``warmup_epochs``, then cosine decay to 0 at ``epochs``.

    ``step`` counts iterations from 0; the value is the rate used for that iteration, taken at
    its end (so the first warm-up step already moves the weights).
    """
    if steps_per_epoch < 1:
        raise ValueError(f'steps_per_epoch must be positive, got {steps_per_epoch}')
    total = epochs * steps_per_epoch
    warmup = warmup_epochs * steps_per_epoch
    t = step + 1
    if t <= warmup:
        return base_lr * t / warmup
    progress = min((t - warmup) / max(total - warmup, 1), 1.0)
    return 0.5 * base_lr * (1 + math.cos(math.pi * progress))


def dropblock_prob(epoch: int, epochs: int, final_prob: float) -> float:
    """DropBlock probability for ``epoch`` (0-based): linear from ~0 to ``final_prob``."""
    return final_prob * min(epoch + 1, epochs) / epochs
