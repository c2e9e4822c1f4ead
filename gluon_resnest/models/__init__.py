"""Networks built from :mod:`gluon_resnest.layers`, and one metadata record per model."""
from .info import MODEL_INFO, model_info
from .resnest import KAIMING_FAN_IN, MODEL_CONFIGS, Bottleneck, ResNeSt, ResNeStConfig

__all__ = ['Bottleneck', 'KAIMING_FAN_IN', 'MODEL_CONFIGS', 'MODEL_INFO', 'ResNeSt',
           'ResNeStConfig', 'model_info']
