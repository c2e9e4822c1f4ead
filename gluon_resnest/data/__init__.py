"""Data pipeline: RecordIO packing, sharding, the paper's augmentations, loaders, mixup."""
from .autoaugment import IMAGENET_POLICY, AutoAugment
from .batch import mixup, smooth_one_hot
from .loader import TrainLoader, ValLoader
from .pack import pack_entries, pack_folder, read_lst, scan_folder
from .records import CorruptRecordError, RecordFile
from .sharding import allreduce_sum, eval_shard, shard_indices
from .transforms import TrainTransform, ValTransform, decode_image

__all__ = ['IMAGENET_POLICY', 'AutoAugment', 'CorruptRecordError', 'RecordFile', 'TrainLoader',
           'TrainTransform', 'ValLoader', 'ValTransform', 'allreduce_sum', 'decode_image',
           'eval_shard', 'mixup', 'pack_entries', 'pack_folder', 'read_lst', 'scan_folder',
           'shard_indices', 'smooth_one_hot']
