"""Networks built from :mod:`gluon_resnest.layers`, and the model table (one record per model)."""
from .info import (
    MODEL_CONFIGS,
    MODEL_INFO,
    MODEL_SPECS,
    ModelSpec,
    ResNeStConfig,
    model_info,
    model_spec,
)
from .resnest import KAIMING_FAN_IN, Bottleneck, ResNeSt

__all__ = ['Bottleneck', 'KAIMING_FAN_IN', 'MODEL_CONFIGS', 'MODEL_INFO', 'MODEL_SPECS',
           'ModelSpec', 'ResNeSt', 'ResNeStConfig', 'model_info', 'model_spec']
