"""gluon_resnest: ResNeSt (Split-Attention Networks) in Apache MXNet Gluon."""
from . import layers, models
from .deploy import optimize_for_inference
from .layers import set_drop_prob
from .model_zoo import get_model, register_gluoncv
from .registry import list_models

__version__ = '0.1.0'

__all__ = ['get_model', 'layers', 'list_models', 'models', 'optimize_for_inference',
           'register_gluoncv', 'set_drop_prob', '__version__']
