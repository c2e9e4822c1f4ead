"""One metadata record per registered model: crops, size, the published numbers, aliases.

Tools read their defaults from here (evaluation crop), the complexity table and the PyTorch
converter's timm aliases are derived from it, and the golden tests check the networks against
it. :func:`model_info` returns a copy of one record.

Keys of a record:

* ``train_crop`` / ``eval_crop``: the paper's training crop and evaluation center crop (the
  short side is resized to ``ceil(eval_crop / 0.875)`` first);
* ``params``: trainable parameters with 1000 classes (counted on the network);
* ``gflops``: the paper's GFLOPs at 224x224 (multiply-accumulates of the convolutions and the
  FC layer, Table 1), None where the paper reports none;
* ``paper_top1``: ImageNet top-1 (%) at ``eval_crop``; ``top1_source`` says where it is
  published: ``paper`` (the ResNeSt paper), ``authors`` (the authors' model zoo), ``gluoncv``
  (GluonCV's model zoo);
* ``timm``: the model's name in timm, None when timm has none.
"""
from __future__ import annotations

from typing import Any

from ..registry import lookup

__all__ = ['MODEL_INFO', 'model_info']


def _record(params: int, top1: float, source: str = 'paper', train_crop: int = 224,
            eval_crop: int = 224, gflops: float | None = None,
            timm: str | None = None) -> dict[str, Any]:
    return {'train_crop': train_crop, 'eval_crop': eval_crop, 'params': params,
            'gflops': gflops, 'paper_top1': top1, 'top1_source': source, 'timm': timm}


MODEL_INFO: dict[str, dict[str, Any]] = {
    'resnest14': _record(10_611_688, 75.75, 'gluoncv', timm='resnest14d'),
    'resnest26': _record(17_069_448, 78.68, 'gluoncv', timm='resnest26d'),
    'resnest50': _record(27_483_240, 81.13, gflops=5.39, timm='resnest50d'),
    'resnest101': _record(48_275_016, 83.0, eval_crop=256, timm='resnest101e'),
    'resnest200': _record(70_201_544, 83.9, train_crop=256, eval_crop=320, timm='resnest200e'),
    'resnest269': _record(110_929_480, 84.5, train_crop=320, eval_crop=416, timm='resnest269e'),
    'resnest50_fast_1s1x64d': _record(26_217_896, 80.35, gflops=4.34),
    'resnest50_fast_2s1x64d': _record(27_483_240, 80.64, gflops=4.34),
    'resnest50_fast_4s1x64d': _record(31_912_712, 80.90, gflops=4.35),
    'resnest50_fast_1s2x40d': _record(25_946_680, 80.72, 'authors'),
    'resnest50_fast_2s2x40d': _record(26_943_792, 81.00, gflops=4.38),
    'resnest50_fast_4s2x40d': _record(30_417_592, 81.17, 'authors', timm='resnest50d_4s2x40d'),
    'resnest50_fast_1s4x24d': _record(25_677_000, 80.97, 'authors', timm='resnest50d_1s4x24d'),
    # The paper's ResNet-D-50 baseline ("0s1x64d"); 79.41% with mixup and AutoAugment.
    'resnetd50': _record(25_576_264, 78.31, gflops=4.34),
}


def model_info(name: str) -> dict[str, Any]:
    """The metadata record of model ``name`` (case-insensitive), as a new dict with ``name``.

    Raises:
        ValueError: No such model; the message lists the close names.
    """
    lookup(name)  # an unknown name fails with the registry's message
    key = str(name).lower()
    return {'name': key, **MODEL_INFO[key]}
