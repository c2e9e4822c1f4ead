"""Per-image training and validation transforms on numpy arrays with OpenCV (and PIL).

Training (:class:`TrainTransform`), in this order:

1. decode the JPEG (OpenCV, the same libjpeg-turbo decoder as ``mx.image.imdecode``);
2. AutoAugment (the authors' ImageNet policy, :mod:`.autoaugment`) on the whole image, before
   cropping, where the authors' training script applies it;
3. random-size crop (area ``crop_scale`` of the image, aspect ratio ``crop_ratio``, log-uniform)
   and resize to ``input_size`` (bilinear, bicubic above 256 as in the paper §5.2);
4. random horizontal flip;
5. colour jitter (brightness, contrast, saturation, each a factor in ``[1-j, 1+j]``, in random
   order), PCA lighting noise (AlexNet eigenvectors, ``alpha ~ N(0, pca_noise)``) and mean/std
   normalisation.

The colour steps of item 5 are all affine in RGB, so they are folded into one 3x4 matrix (the
contrast mean is propagated analytically) and applied in a single OpenCV pass, without clipping
between them (like ``mx.image``'s float augmenters).

Validation (:class:`ValTransform`), the authors' ``verify.py`` pixel for pixel: below 320
pixels, resize the short side to ``ceil(crop / 0.875)`` (the long side in proportion, rounded
down; bilinear), then centre crop, as MXNet's ``transforms.Resize(keep_ratio=True)`` and
``transforms.CenterCrop``; from 320 up, crop the centre square of ``crop / (crop + 32)`` of the
short side and resize it to ``crop`` (PIL bicubic), as their ``ECenterCrop``.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import cv2
import numpy as np
from PIL import Image

from ..constants import CROP_RATIO, IMAGENET_MEAN, IMAGENET_STD
from .autoaugment import AutoAugment
from .records import check_encoded_image

__all__ = ['ImageDecodeError', 'TrainTransform', 'ValTransform', 'decode_image',
           'random_crop_box', 'resize_interpolation', 'val_resize_size']

# AlexNet's PCA of ImageNet RGB pixels (0-255 scale), as in mx.image.LightingAug.
EIGVAL = np.array([55.46, 4.794, 1.148], np.float64)
EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                   [-0.5808, -0.0045, -0.8140],
                   [-0.5836, -0.6948, 0.4203]], np.float64)
_GRAY = np.array([0.299, 0.587, 0.114], np.float64)


class ImageDecodeError(ValueError):
    """Encoded image data that cannot be decoded."""


def decode_image(data: bytes) -> np.ndarray:
    """Decode an encoded image to an (H, W, 3) uint8 RGB array.

    Raises:
        ImageDecodeError: empty, truncated or undecodable data.
    """
    reason = check_encoded_image(data)
    if reason:
        raise ImageDecodeError(reason)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as err:
        raise ImageDecodeError(f'OpenCV cannot decode the image data: {err}') from err
    if img is None or img.size == 0:
        raise ImageDecodeError('OpenCV cannot decode the image data')
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def resize_interpolation(size: int) -> int:
    """OpenCV interpolation for output ``size``: bicubic above 256 (paper §5.2), else bilinear."""
    return cv2.INTER_CUBIC if size > 256 else cv2.INTER_LINEAR


def random_crop_box(height: int, width: int, scale: Tuple[float, float],
                    ratio: Tuple[float, float], rng: np.random.Generator,
                    attempts: int = 10) -> Tuple[int, int, int, int]:
    """Random-size crop box ``(y0, x0, h, w)``.

    Area is drawn uniformly from ``scale`` times the image area, aspect ratio (w/h) log-uniformly
    from ``ratio``; after ``attempts`` misses, the largest center crop within ``ratio``. With
    ``scale[0] >= 1`` the whole image is returned, so the transform reduces to a plain resize.
    """
    if scale[0] >= 1.0:
        return 0, 0, height, width
    area = float(height * width)
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            y0 = int(rng.integers(0, height - h + 1))
            x0 = int(rng.integers(0, width - w + 1))
            return y0, x0, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, max(1, int(round(width / ratio[0])))
    elif in_ratio > ratio[1]:
        h, w = height, max(1, int(round(height * ratio[1])))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def val_resize_size(crop: int, crop_ratio: float = CROP_RATIO) -> int:
    """Short side before the center crop: ``ceil(crop / crop_ratio)`` (256 for 224)."""
    return int(math.ceil(crop / crop_ratio))


def _normalise_into(img: np.ndarray, matrix: np.ndarray, out: np.ndarray) -> None:
    """``out[c] = matrix[c, :3] . img[..., :] + matrix[c, 3]`` as float32 CHW."""
    hwc = cv2.transform(img.astype(np.float32), matrix.astype(np.float32))
    np.copyto(out, hwc.transpose(2, 0, 1))


class ValTransform:
    """The authors' evaluation transform (see the module docstring), then mean/std normalisation.

    Args:
        crop: output side.
        mean: per-channel RGB mean (0-255 scale).
        std: per-channel RGB standard deviation.
        crop_ratio: crop / resized short side (below 320 pixels).
    """

    def __init__(self, crop: int, mean: Sequence[float], std: Sequence[float],
                 crop_ratio: float = CROP_RATIO):
        self.crop = int(crop)
        self.resize = val_resize_size(crop, crop_ratio)
        self.mean = np.asarray(mean, np.float64)
        self.std = np.asarray(std, np.float64)
        self.matrix = np.concatenate([np.diag(1.0 / self.std), (-self.mean / self.std)[:, None]],
                                     axis=1)

    def crop_image(self, img: np.ndarray) -> np.ndarray:
        """The (crop, crop, 3) uint8 centre crop of RGB ``img``."""
        h, w = img.shape[:2]
        if self.crop >= 320:
            side = float(self.crop) / (self.crop + 32) * min(h, w)
            top, left = int(round((h - side) / 2.0)), int(round((w - side) / 2.0))
            square = Image.fromarray(np.ascontiguousarray(img)).crop(
                (left, top, left + side, top + side))
            return np.asarray(square.resize((self.crop, self.crop), Image.BICUBIC))
        # Short side to ``resize``, long side in proportion rounded down (integer arithmetic,
        # as MXNet's image resize operator), bilinear.
        nh, nw = ((self.resize, w * self.resize // h) if h <= w
                  else (h * self.resize // w, self.resize))
        if (nh, nw) != (h, w):
            img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
        y0, x0 = int((nh - self.crop) / 2), int((nw - self.crop) / 2)
        return img[y0:y0 + self.crop, x0:x0 + self.crop]

    def __call__(self, img: np.ndarray, out: np.ndarray,
                 rng: np.random.Generator | None = None) -> None:
        """Write the transformed (3, crop, crop) float32 image of RGB ``img`` into ``out``."""
        _normalise_into(self.crop_image(img), self.matrix, out)


class TrainTransform:
    """The paper's training augmentations (see the module docstring).

    Args:
        input_size: output side.
        crop_scale: range of the crop area as a fraction of the image area.
        crop_ratio: range of the crop aspect ratio (width / height).
        hflip: random horizontal flip with probability 0.5.
        color_jitter: brightness, contrast and saturation jitter strength (0 disables).
        pca_noise: standard deviation of the PCA lighting noise (0 disables).
        auto_augment: apply the AutoAugment ImageNet policy.
        mean: per-channel RGB mean (0-255 scale).
        std: per-channel RGB standard deviation.
    """

    def __init__(self, input_size: int, crop_scale: Tuple[float, float] = (0.08, 1.0),
                 crop_ratio: Tuple[float, float] = (3 / 4, 4 / 3), hflip: bool = True,
                 color_jitter: float = 0.4, pca_noise: float = 0.1, auto_augment: bool = False,
                 mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD):
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f'crop_scale must satisfy 0 < min <= max <= 1, got {crop_scale}')
        if not 0 < crop_ratio[0] <= crop_ratio[1]:
            raise ValueError(f'crop_ratio must satisfy 0 < min <= max, got {crop_ratio}')
        if color_jitter < 0 or pca_noise < 0:
            raise ValueError('color_jitter and pca_noise must be >= 0')
        self.size = int(input_size)
        self.crop_scale = tuple(float(v) for v in crop_scale)
        self.crop_ratio = tuple(float(v) for v in crop_ratio)
        self.hflip = bool(hflip)
        self.color_jitter = float(color_jitter)
        self.pca_noise = float(pca_noise)
        self.auto_augment = AutoAugment() if auto_augment else None
        self.mean = np.asarray(mean, np.float64)
        self.std = np.asarray(std, np.float64)
        self.interp = resize_interpolation(self.size)

    def colour_matrix(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """3x4 affine map (on RGB 0-255) of jitter, lighting and normalisation for ``img``."""
        M = np.eye(3)
        t = np.zeros(3)
        if self.color_jitter > 0:
            j = self.color_jitter
            means = np.asarray(cv2.mean(img)[:3], np.float64)
            for op in rng.permutation(3):
                f = rng.uniform(1.0 - j, 1.0 + j)
                if op == 0:  # brightness
                    M, t = f * M, f * t
                elif op == 1:  # contrast: blend with the mean grey level of the current image
                    g = float(_GRAY @ (M @ means + t))
                    M, t = f * M, f * t + (1.0 - f) * g
                else:  # saturation: blend with each pixel's grey level
                    A = f * np.eye(3) + (1.0 - f) * np.outer(np.ones(3), _GRAY)
                    M, t = A @ M, A @ t
        if self.pca_noise > 0:
            alpha = rng.normal(0.0, self.pca_noise, 3)
            t = t + EIGVEC @ (alpha * EIGVAL)
        M = M / self.std[:, None]
        t = (t - self.mean) / self.std
        return np.concatenate([M, t[:, None]], axis=1)

    def __call__(self, img: np.ndarray, out: np.ndarray, rng: np.random.Generator) -> None:
        """Write the augmented (3, S, S) float32 image of RGB ``img`` into ``out``."""
        if self.auto_augment is not None:
            img = self.auto_augment(np.ascontiguousarray(img), rng)
        h, w = img.shape[:2]
        y0, x0, ch, cw = random_crop_box(h, w, self.crop_scale, self.crop_ratio, rng)
        crop = img[y0:y0 + ch, x0:x0 + cw]
        if (ch, cw) != (self.size, self.size):
            crop = cv2.resize(crop, (self.size, self.size), interpolation=self.interp)
        if self.hflip and rng.random() < 0.5:
            crop = cv2.flip(crop, 1)
        _normalise_into(crop, self.colour_matrix(crop, rng), out)
