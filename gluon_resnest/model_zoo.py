"""GluonCV-style model zoo: ``get_model`` with GluonCV's signature and ``register_gluoncv``.

Nothing is downloaded: ``pretrained`` is a path to a ``.params`` file, or ``True`` to read
``{root}/{name}.params`` that the user has put there.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable

import mxnet as mx
from mxnet.gluon import nn

from . import models  # noqa: F401 - registers the builders
from .registry import list_models, lookup

__all__ = ['get_model', 'list_models', 'register_gluoncv']

logger = logging.getLogger(__name__)


def get_model(name: str, pretrained: bool | str = False, ctx: Any = None,
              root: str = os.path.join('~', '.mxnet', 'models'), classes: int = 1000,
              norm_layer: Callable[..., nn.HybridBlock] = nn.BatchNorm,
              norm_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> nn.HybridBlock:
    """Build a registered model, optionally loading its parameters.

    Args:
        name: A name from :func:`list_models` (case-insensitive).
        pretrained: False; a path to a ``.params`` file saved by ``save_parameters`` (ours or
            GluonCV's); or True to read ``{root}/{name}.params``. Nothing is downloaded.
        ctx: Context (or list) for the loaded parameters; defaults to ``mx.cpu()``.
        root: Folder searched when ``pretrained`` is True.
        classes: Classifier outputs.
        norm_layer: Normalisation layer, e.g. ``mx.gluon.contrib.nn.SyncBatchNorm``.
        norm_kwargs: Extra arguments of ``norm_layer``.
        **kwargs: Architecture overrides of :class:`gluon_resnest.models.ResNeSt`
            (``dropblock_prob``, ``final_drop``, ``last_gamma``, ``output_stride``,
            ``features_only``, ``use_global_stats``, ...). GluonCV's ``dilated=True`` means
            ``output_stride=8`` and ``dilation=2`` means ``output_stride=16``; GluonCV's
            ``input_size`` is accepted and unused (our DropBlock adapts to any size).

    Returns:
        The network; uninitialised unless ``pretrained`` is set.
    """
    builder = lookup(name)
    kwargs.pop('input_size', None)
    if kwargs.pop('dilated', False):
        kwargs['output_stride'] = 8
    dilation = kwargs.pop('dilation', 1)
    if dilation != 1:
        if dilation not in (2, 4):
            raise ValueError(f'dilation must be 1, 2 or 4 (GluonCV semantics), got {dilation}')
        kwargs['output_stride'] = 16 if dilation == 2 else 8
    net = builder(classes=classes, norm_layer=norm_layer, norm_kwargs=norm_kwargs, **kwargs)
    if pretrained:
        path = pretrained if isinstance(pretrained, (str, os.PathLike)) else os.path.join(
            os.path.expanduser(root), f'{builder.__name__}.params')
        logger.info('loading %s parameters from %s', builder.__name__, path)
        net.load_parameters(path, ctx=ctx or mx.cpu())
    return net


def register_gluoncv(override: bool = False) -> list[str]:
    """Make our models available through GluonCV; see :mod:`gluon_resnest.gluoncv_bridge`.

    Args:
        override: Also build ours wherever GluonCV builds its own ResNeSt (``resnest14`` ...
            ``resnest269`` in its model zoo, detectors and segmentation models), with GluonCV's
            defaults. Without it those names keep GluonCV's implementation.

    Returns:
        The model-zoo names now served by this package.
    """
    from .gluoncv_bridge import register_gluoncv as register  # GluonCV is optional

    return register(override)
