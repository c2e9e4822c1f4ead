"""Networks built from :mod:`gluon_resnest.layers`."""
from .resnest import MODEL_CONFIGS, Bottleneck, ResNeSt, ResNeStConfig

__all__ = ['Bottleneck', 'MODEL_CONFIGS', 'ResNeSt', 'ResNeStConfig']
