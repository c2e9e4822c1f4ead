"""Batch-level transforms for the loss: label smoothing and mixup (paper §4.2, §5.1)."""
from __future__ import annotations

from typing import Tuple, Union

import mxnet as mx
import numpy as np

__all__ = ['mixup', 'smooth_one_hot']

Rng = Union[np.random.Generator, np.random.RandomState]


def smooth_one_hot(label: mx.nd.NDArray, classes: int, epsilon: float = 0.1) -> mx.nd.NDArray:
    """Smoothed one-hot targets: ``1 - eps + eps / classes`` on the label, ``eps / classes`` off.

    Args:
        label: (B,) class indices (any numeric dtype).
        classes: number of classes.
        epsilon: smoothing; 0 gives plain one-hot targets.

    Returns:
        (B, classes) float32 targets, each row summing to 1.
    """
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f'epsilon must be in [0, 1), got {epsilon}')
    # The two values are rounded to float32 once, as the authors' script computes them
    # (scaling and shifting a one-hot array instead rounds twice: 1 ulp off for 10 classes).
    return mx.nd.one_hot(label.astype('int64', copy=False), classes,
                         on_value=1.0 - epsilon + epsilon / classes,
                         off_value=epsilon / classes, dtype='float32')


def mixup(data: mx.nd.NDArray, targets: mx.nd.NDArray, alpha: float,
          rng: Rng) -> Tuple[mx.nd.NDArray, mx.nd.NDArray]:
    """Mix every sample with the batch in reversed order (paper §5.1).

    ``lam ~ Beta(alpha, alpha)``; sample ``i`` becomes ``lam * x[i] + (1 - lam) * x[B-1-i]`` and its
    target likewise, so the loss against the mixed soft targets equals the mixup loss.

    Args:
        data: (B, ...) batch.
        targets: (B, classes) soft targets (e.g. from :func:`smooth_one_hot`).
        alpha: Beta parameter; ``alpha <= 0`` returns the inputs unchanged.
        rng: numpy random generator that draws ``lam``.

    Returns:
        (mixed data, mixed targets).
    """
    if data.shape[0] != targets.shape[0]:
        raise ValueError(f'batch sizes differ: data {data.shape[0]}, targets {targets.shape[0]}')
    if alpha <= 0:
        return data, targets
    lam = float(rng.beta(alpha, alpha))
    mixed = lam * data + (1.0 - lam) * mx.nd.reverse(data, axis=0)
    mixed_targets = lam * targets + (1.0 - lam) * mx.nd.reverse(targets, axis=0)
    return mixed, mixed_targets
