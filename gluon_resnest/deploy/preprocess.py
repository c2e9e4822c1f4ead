"""The paper's evaluation preprocessing: image decoding, resize and center crop, normalisation."""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

import mxnet as mx
import numpy as np
from mxnet.gluon import nn

from ..constants import CROP_RATIO, DEFAULT_CROP, IMAGENET_MEAN, IMAGENET_STD
from ..errors import InputError

__all__ = ['CROP_RATIO', 'IMAGENET_MEAN', 'IMAGENET_STD', 'Normalize', 'eval_transform',
           'load_class_names', 'load_image', 'resize_size']

class Normalize(nn.HybridBlock):
    """``(x - mean) / std`` per channel, with mean/std stored as constants of the graph."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f'mean and std need one entry per channel and std > 0, '
                             f'got mean={mean}, std={std}')
        shape = (1, len(mean), 1, 1)
        with self.name_scope():
            self.mean = self.params.get_constant(
                'mean', mx.nd.array(np.asarray(mean, dtype=np.float32).reshape(shape)))
            self.scale = self.params.get_constant(
                'scale', mx.nd.array((1.0 / np.asarray(std, dtype=np.float32)).reshape(shape)))

    def hybrid_forward(self, F, x, mean, scale):  # noqa: N803 - MXNet's convention
        return F.broadcast_mul(F.broadcast_sub(x, mean), scale)


def resize_size(crop: int) -> int:
    """Short side before the center crop: ``ceil(crop / 0.875)`` (224 -> 256)."""
    return int(math.ceil(crop / CROP_RATIO))


def load_image(path: str) -> np.ndarray:
    """Decode an image file to an HWC uint8 RGB array, exactly as packing and training see it.

    See :func:`gluon_resnest.data.pack.read_image`: transparency composited on white, EXIF
    orientation applied, every format the packer accepts (GIF, 16-bit and float TIFF, ...).

    Raises:
        FileNotFoundError: no such file.
        InputError: an unreadable file (a ``ValueError`` naming it).
    """
    from ..data.pack import read_image

    return read_image(path)


def eval_transform(img: np.ndarray | mx.nd.NDArray, crop: int = DEFAULT_CROP,
                   mean: Sequence[float] | None = IMAGENET_MEAN,
                   std: Sequence[float] | None = IMAGENET_STD) -> mx.nd.NDArray:
    """The authors' evaluation transform (``verify.py``): resize the short side to
    ``ceil(crop/0.875)``, center crop; from 320 up, their centre crop of ``crop / (crop + 32)``
    of the short side, resized to ``crop``.

    The same code as the validation loader (:class:`gluon_resnest.data.ValTransform`), so a
    prediction and an evaluation see identical pixels.

    Args:
        img: HWC uint8 RGB image.
        crop: Side of the square crop.
        mean: Subtracted per channel (0-255 scale); None leaves 0-255 values (for exports made
            with ``preprocess=True``).
        std: Divided per channel; None with ``mean=None``.

    Returns:
        A float32 ``(1, 3, crop, crop)`` batch.
    """
    from ..data import ValTransform

    if isinstance(img, mx.nd.NDArray):
        img = img.asnumpy()
    if mean is None:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    transform = ValTransform(crop, mean, std, CROP_RATIO)
    out = np.empty((3, transform.crop, transform.crop), np.float32)
    transform(np.ascontiguousarray(img, dtype=np.uint8), out)
    return mx.nd.array(out[None])


def load_class_names(path: str) -> list[str]:
    """Class names, one per line (blank lines ignored)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'no classes file at {path!r}')
    if os.path.isdir(path):
        raise InputError('the classes file is a folder', path)
    try:
        with open(path, encoding='utf-8') as handle:
            return [line.strip() for line in handle if line.strip()]
    except UnicodeDecodeError:
        raise InputError('not a text file of class names', path) from None


