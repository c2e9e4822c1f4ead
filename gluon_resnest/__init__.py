"""gluon_resnest: ResNeSt (Split-Attention Networks) in Apache MXNet Gluon."""
from . import threads

threads.configure()  # before libmxnet.so loads where possible (see gluon_resnest.threads)

from .cpu import enable_amx  # noqa: E402

enable_amx()  # before MXNet's first oneDNN call (see gluon_resnest.cpu)

from . import layers, models  # noqa: E402
from .deploy import fast_inference, optimize_for_inference  # noqa: E402
from .gluoncv_bridge import gluoncv_override, register_gluoncv, unregister_gluoncv  # noqa: E402
from .layers import set_drop_prob  # noqa: E402
from .model_zoo import get_model  # noqa: E402
from .models import model_info  # noqa: E402
from .registry import list_models  # noqa: E402

__version__ = '0.1.0'

__all__ = ['enable_amx', 'fast_inference', 'get_model', 'gluoncv_override', 'layers',
           'list_models', 'models', 'model_info', 'optimize_for_inference', 'register_gluoncv',
           'set_drop_prob', 'unregister_gluoncv', '__version__']
