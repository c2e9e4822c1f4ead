"""The model table: one :class:`ModelSpec` per registered model, its architecture and figures.

:data:`MODEL_SPECS` is the only table: the builders of :mod:`gluon_resnest.models.resnest` build
``spec.config``; tools and recipes take their default crops from it; the complexity table, the
PyTorch converter's timm aliases and the builders' docstrings are derived from it or tested
against it; the golden tests check the networks against its parameter counts.
:data:`MODEL_CONFIGS` (architectures) and :data:`MODEL_INFO` (figures, as dicts) are views of
it, and :func:`model_info` returns one record as a new dict.

Keys of a :func:`model_info` record (the fields of :class:`ModelSpec` but ``config``):

* ``train_crop`` / ``eval_crop``: the paper's training crop and evaluation center crop;
* ``crop_ratio``: the evaluation transform's crop / resized short side (the short side is
  resized to ``ceil(eval_crop / crop_ratio)`` first; :data:`~gluon_resnest.constants.CROP_RATIO`);
* ``params``: trainable parameters with 1000 classes, counted on the network;
* ``paper_params``: the paper's parameter count in millions, as printed (``27.5``), None where
  the paper has no row for the model; it can differ from the counted one in the last digit;
* ``gflops``: the paper's GFLOPs at 224x224 (multiply-accumulates of the convolutions and the
  FC layer, Table 1), None where the paper reports none;
* ``paper_top1``: ImageNet top-1 (%) at ``eval_crop``; ``top1_source`` says where it is
  published: ``paper`` (the ResNeSt paper), ``authors`` (the authors' model zoo), ``gluoncv``
  (GluonCV's model zoo);
* ``paper_table``: the paper's table with the model's figures, None where ``top1_source`` is
  not ``paper``;
* ``timm``: the model's name in timm, None when timm has none.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..constants import CROP_RATIO, DEFAULT_CROP
from ..registry import lookup

__all__ = ['MODEL_CONFIGS', 'MODEL_INFO', 'MODEL_SPECS', 'ModelSpec', 'ResNeStConfig',
           'model_info', 'model_spec']


@dataclass(frozen=True)
class ResNeStConfig:
    """The architecture of one model: arguments of :class:`~gluon_resnest.models.ResNeSt`."""

    layers: tuple[int, int, int, int]
    stem_width: int = 32
    radix: int = 2
    cardinality: int = 1
    bottleneck_width: int = 64
    avd: bool = True
    avd_first: bool = False
    final_drop: float = 0.0
    deep_stem: bool = True
    avg_down: bool = True


@dataclass(frozen=True)
class ModelSpec:
    """One row of the model table: the architecture and the figures of one model.

    The paper's figures (``paper_*``, ``gflops``) are as printed; ``params`` is counted on the
    network (``tests/test_golden.py``). See the module docstring for each field.
    """

    name: str
    config: ResNeStConfig
    params: int
    paper_top1: float
    top1_source: str = 'paper'
    paper_table: str | None = None
    paper_params: float | None = None
    gflops: float | None = None
    train_crop: int = DEFAULT_CROP
    eval_crop: int = DEFAULT_CROP
    crop_ratio: float = CROP_RATIO
    timm: str | None = None

    def info(self) -> dict[str, Any]:
        """The figures as a new dict: every field but ``config``."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                if field.name != 'config'}


_T1L, _T1R, _T2 = 'Table 1 (left)', 'Table 1 (right)', 'Table 2'
_R50 = (3, 4, 6, 3)


def _fast(radix: int, cardinality: int = 1, width: int = 64) -> ResNeStConfig:
    """ResNeSt-50-fast ``{radix}s{cardinality}x{width}d``: the avd pooling before the 3x3 conv."""
    return ResNeStConfig(_R50, radix=radix, cardinality=cardinality, bottleneck_width=width,
                         avd_first=True)


MODEL_SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in [
    ModelSpec('resnest14', ResNeStConfig((1, 1, 1, 1)), 10_611_688, 75.75, 'gluoncv',
              timm='resnest14d'),
    ModelSpec('resnest26', ResNeStConfig((2, 2, 2, 2)), 17_069_448, 78.68, 'gluoncv',
              timm='resnest26d'),
    ModelSpec('resnest50', ResNeStConfig(_R50), 27_483_240, 81.13, paper_table=_T1L,
              paper_params=27.5, gflops=5.39, timm='resnest50d'),
    ModelSpec('resnest101', ResNeStConfig((3, 4, 23, 3), stem_width=64), 48_275_016, 83.0,
              paper_table=_T2, paper_params=48, eval_crop=256, timm='resnest101e'),
    ModelSpec('resnest200', ResNeStConfig((3, 24, 36, 3), stem_width=64, final_drop=0.2),
              70_201_544, 83.9, paper_table=_T2, paper_params=70, train_crop=256, eval_crop=320,
              timm='resnest200e'),
    ModelSpec('resnest269', ResNeStConfig((3, 30, 48, 8), stem_width=64, final_drop=0.2),
              110_929_480, 84.5, paper_table=_T2, paper_params=111, train_crop=320,
              eval_crop=416, timm='resnest269e'),
    ModelSpec('resnest50_fast_1s1x64d', _fast(1), 26_217_896, 80.35, paper_table=_T1R,
              paper_params=26.3, gflops=4.34),
    ModelSpec('resnest50_fast_2s1x64d', _fast(2), 27_483_240, 80.64, paper_table=_T1R,
              paper_params=27.5, gflops=4.34),
    ModelSpec('resnest50_fast_4s1x64d', _fast(4), 31_912_712, 80.90, paper_table=_T1R,
              paper_params=31.9, gflops=4.35),
    ModelSpec('resnest50_fast_1s2x40d', _fast(1, 2, 40), 25_946_680, 80.72, 'authors'),
    ModelSpec('resnest50_fast_2s2x40d', _fast(2, 2, 40), 26_943_792, 81.00, paper_table=_T1R,
              paper_params=26.9, gflops=4.38),
    ModelSpec('resnest50_fast_4s2x40d', _fast(4, 2, 40), 30_417_592, 81.17, 'authors',
              timm='resnest50d_4s2x40d'),
    ModelSpec('resnest50_fast_1s4x24d', _fast(1, 4, 24), 25_677_000, 80.97, 'authors',
              timm='resnest50d_1s4x24d'),
    # The paper's ResNet-D-50 baseline ("0s1x64d"); 79.41% with mixup and AutoAugment.
    ModelSpec('resnetd50', ResNeStConfig(_R50, radix=0, avd_first=True), 25_576_264, 78.31,
              paper_table=_T1L, paper_params=25.6, gflops=4.34),
]}

#: The architecture of each model (a view of :data:`MODEL_SPECS`).
MODEL_CONFIGS: dict[str, ResNeStConfig] = {name: s.config for name, s in MODEL_SPECS.items()}

#: The figures of each model as dicts (a view of :data:`MODEL_SPECS`; see :func:`model_info`).
MODEL_INFO: dict[str, dict[str, Any]] = {
    name: {k: v for k, v in s.info().items() if k != 'name'} for name, s in MODEL_SPECS.items()}


def model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of model ``name`` (case-insensitive).

    Raises:
        ValueError: No such model; the message lists the close names.
    """
    lookup(name)  # an unknown name fails with the registry's message
    return MODEL_SPECS[str(name).lower()]


def model_info(name: str) -> dict[str, Any]:
    """The figures of model ``name`` (case-insensitive) as a new dict, with ``name``.

    Raises:
        ValueError: No such model; the message lists the close names.
    """
    return model_spec(name).info()
