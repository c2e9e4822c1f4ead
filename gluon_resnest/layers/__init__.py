"""Building blocks of ResNeSt: Split-Attention, DropBlock and the ResNet-D pieces."""
from .dropblock import DropBlock, set_drop_prob
from .resnet_d import DeepStem, Shortcut
from .split_attn import SplitAttention, attention_channels
from .sync_bn import HorovodSyncBatchNorm

__all__ = ['DeepStem', 'DropBlock', 'HorovodSyncBatchNorm', 'Shortcut', 'SplitAttention',
           'attention_channels', 'set_drop_prob']
