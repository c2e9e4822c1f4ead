"""Building blocks of ResNeSt: Split-Attention, DropBlock and the ResNet-D pieces."""
from .dropblock import DropBlock, set_drop_prob
from .norm_relu import ReLU, fuse_norm_relu, unfused_norm_relu
from .resnet_d import DeepStem, Shortcut
from .split_attn import SplitAttention, attention_channels
from .sync_bn import HorovodSyncBatchNorm

__all__ = ['DeepStem', 'DropBlock', 'HorovodSyncBatchNorm', 'ReLU', 'Shortcut', 'SplitAttention',
           'attention_channels', 'fuse_norm_relu', 'set_drop_prob', 'unfused_norm_relu']
