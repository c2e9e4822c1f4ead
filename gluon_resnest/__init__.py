"""gluon_resnest: ResNeSt (Split-Attention Networks) in Apache MXNet Gluon."""
from . import layers, models
from .deploy import optimize_for_inference
from .gluoncv_bridge import gluoncv_override, register_gluoncv, unregister_gluoncv
from .layers import set_drop_prob
from .model_zoo import get_model
from .models import model_info
from .registry import list_models

__version__ = '0.1.0'

__all__ = ['get_model', 'gluoncv_override', 'layers', 'list_models', 'models', 'model_info',
           'optimize_for_inference', 'register_gluoncv', 'set_drop_prob', 'unregister_gluoncv',
           '__version__']
