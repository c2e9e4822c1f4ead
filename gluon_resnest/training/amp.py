"""Automatic mixed precision (MXNet AMP) for the trainer: set-up, loss-scaler state, checks.

``float16`` is the GPU setting. ``bfloat16`` runs the same code path on CPUs with oneDNN, which
is how the path is exercised without a GPU: ``amp.init``, ``amp.init_trainer`` on Horovod's
``DistributedTrainer``, ``amp.scale_loss``, the loss scaler saved with every checkpoint and
restored on resume, and an FP32 graph exported at the end (see
:func:`gluon_resnest.deploy.graph.strip_amp_casts`).
"""
from __future__ import annotations

from typing import Any

from mxnet import gluon

__all__ = ['check_amp', 'init_amp', 'loss_scaler_state', 'restore_loss_scaler']

# LossScaler attributes that make up its state (MXNet 1.9 mxnet/contrib/amp/loss_scaler.py).
_SCALER_FIELDS = ('_loss_scale', '_next_loss_scale', '_unskipped')


def check_amp(dtype: str, num_gpus: int) -> str | None:
    """Why AMP in ``dtype`` cannot run here, or None when it can."""
    if dtype == 'float16' and num_gpus == 0:
        return ('amp with amp_dtype float16 needs a GPU and none is visible; '
                'use --amp-dtype bfloat16 to run mixed precision on a CPU')
    return None


def init_amp(dtype: str) -> None:
    """Start MXNet AMP for ``dtype``; call it once per process, before building networks."""
    from mxnet.contrib import amp

    amp.init(target_dtype=dtype)


def loss_scaler_state(trainer: gluon.Trainer) -> dict[str, Any] | None:
    """The dynamic loss scaler's state, JSON-ready, or None when AMP is off for ``trainer``."""
    scaler = getattr(trainer, '_amp_loss_scaler', None)
    if scaler is None:
        return None
    return {name.lstrip('_'): float(getattr(scaler, name)) for name in _SCALER_FIELDS}


def restore_loss_scaler(trainer: gluon.Trainer, state: dict[str, Any] | None) -> None:
    """Put a state from :func:`loss_scaler_state` back into ``trainer``'s loss scaler.

    Raises:
        ValueError: The checkpoint and the run disagree on whether AMP is on.
    """
    scaler = getattr(trainer, '_amp_loss_scaler', None)
    if (scaler is None) != (state is None):
        raise ValueError('the checkpoint was written with amp '
                         f'{"on" if state is not None else "off"} and this run has it '
                         f'{"on" if scaler is not None else "off"}; resume with the same --amp')
    if scaler is None:
        return
    for name in _SCALER_FIELDS:
        value = state[name.lstrip('_')]
        setattr(scaler, name, int(value) if name == '_unskipped' else value)
