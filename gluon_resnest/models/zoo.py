"""``get_model``: build a registered model with GluonCV's signature, optionally with weights.

``pretrained=True`` loads the model's published ImageNet weights, downloaded once into GluonCV's
cache (``~/.mxnet/models``) and verified (:mod:`gluon_resnest.weights`); ``pretrained`` may
also be a sha1 prefix of a published file, as in GluonCV, or the path of a ``.params`` file.
The public names are :func:`gluon_resnest.get_model` and
:func:`gluon_resnest.model_zoo.get_model`; this module sits below both
:mod:`gluon_resnest.model_zoo` and :mod:`gluon_resnest.gluoncv_bridge`, and imports neither.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import mxnet as mx
from mxnet.gluon import nn

from ..registry import lookup
from ..weights import load_pretrained, resolve_pretrained
from . import resnest  # noqa: F401 - registers the builders

__all__ = ['get_model']


def get_model(name: str, pretrained: bool | str = False, ctx: Any = None,
              root: str | os.PathLike | None = None, classes: int = 1000,
              norm_layer: Callable[..., nn.HybridBlock] = nn.BatchNorm,
              norm_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> nn.HybridBlock:
    """Build a registered model, optionally loading its parameters.

    Args:
        name: A name from :func:`list_models` (case-insensitive).
        pretrained: False; True for the published ImageNet weights (downloaded into
            ``root`` when not there, sha1-verified; a ``{root}/{name}.params`` put there by
            hand is used first); a sha1 prefix of a published file (GluonCV's tag, e.g.
            ``'bcfefe1d'``); or the path of a ``.params`` file saved by ``save_parameters``
            (ours, GluonCV's or the authors').
        ctx: Context (or list) for the loaded parameters; defaults to ``mx.cpu()``.
        root: Cache of published weights; default ``$MXNET_HOME/models`` when ``MXNET_HOME``
            is set, else ``~/.mxnet/models`` (GluonCV's).
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

    Raises:
        FileNotFoundError: No such file, or the published weights could not be downloaded
            (:class:`~gluon_resnest.weights.WeightsError`: the message names the URL and the
            path where the file belongs).
        ValueError: An unknown model, or a file of another architecture.
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
    # The file first: a failed download ends before a network is built.
    resolved = resolve_pretrained(builder.__name__, pretrained, root) if pretrained else None
    net = builder(classes=classes, norm_layer=norm_layer, norm_kwargs=norm_kwargs, **kwargs)
    if pretrained:
        load_pretrained(net, builder.__name__, pretrained, root=root, ctx=ctx or mx.cpu(),
                        resolved=resolved)
    return net
