"""AutoAugment (Cubuk et al., CVPR 2019) ImageNet policy on uint8 RGB arrays, with OpenCV.

The ImageNet policy is the 25 sub-policies of the AutoAugment paper (appendix, Table 9): each is
two operations ``(name, probability, magnitude)``; one sub-policy is drawn uniformly per image and
each of its operations is applied with its probability.

Magnitudes are the paper's 10 levels ``0..9`` spread uniformly over the paper's ranges, with the
level read as strength (level 0 is the identity), the convention of the widely used PyTorch
implementations (torchvision's among them):

================  ==============================================================
ShearX/Y          shear ``0 .. 0.3`` (random sign)
TranslateX/Y      ``0 .. 150/331`` of the image side (random sign)
Rotate            ``0 .. 30`` degrees (random sign)
Color, Contrast,  enhancement factor ``1 + (0 .. 0.9)`` (random sign), as PIL's ImageEnhance
Brightness,
Sharpness
Posterize         keep ``round(8 .. 4)`` bits
Solarize          invert pixels ``>= 256 .. 0``
AutoContrast,     no magnitude; same results as PIL's ImageOps
Equalize, Invert
================  ==============================================================

Geometric operations fill the uncovered area with grey (128) and sample with nearest neighbour,
like PIL's ``Image.transform`` default. All operations take and return ``(H, W, 3)`` uint8 arrays;
they work on the whole array with OpenCV/numpy (no per-pixel Python).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import cv2
import numpy as np

__all__ = ['IMAGENET_POLICY', 'OPS', 'AutoAugment', 'apply_op', 'magnitude_to_arg']

FILL = (128, 128, 128)
_GRAY = np.array([0.299, 0.587, 0.114], np.float32)

# (op, probability, magnitude level): the AutoAugment paper's ImageNet policy, in its order.
IMAGENET_POLICY: List[Tuple[Tuple[str, float, int], Tuple[str, float, int]]] = [
    (('Posterize', 0.4, 8), ('Rotate', 0.6, 9)),
    (('Solarize', 0.6, 5), ('AutoContrast', 0.6, 5)),
    (('Equalize', 0.8, 8), ('Equalize', 0.6, 3)),
    (('Posterize', 0.6, 7), ('Posterize', 0.6, 6)),
    (('Equalize', 0.4, 7), ('Solarize', 0.2, 4)),
    (('Equalize', 0.4, 4), ('Rotate', 0.8, 8)),
    (('Solarize', 0.6, 3), ('Equalize', 0.6, 7)),
    (('Posterize', 0.8, 5), ('Equalize', 1.0, 2)),
    (('Rotate', 0.2, 3), ('Solarize', 0.6, 8)),
    (('Equalize', 0.6, 8), ('Posterize', 0.4, 6)),
    (('Rotate', 0.8, 8), ('Color', 0.4, 0)),
    (('Rotate', 0.4, 9), ('Equalize', 0.6, 2)),
    (('Equalize', 0.0, 7), ('Equalize', 0.8, 8)),
    (('Invert', 0.6, 4), ('Equalize', 1.0, 8)),
    (('Color', 0.6, 4), ('Contrast', 1.0, 8)),
    (('Rotate', 0.8, 8), ('Color', 1.0, 2)),
    (('Color', 0.8, 8), ('Solarize', 0.8, 7)),
    (('Sharpness', 0.4, 7), ('Invert', 0.6, 8)),
    (('ShearX', 0.6, 5), ('Equalize', 1.0, 9)),
    (('Color', 0.4, 0), ('Equalize', 0.6, 3)),
    (('Equalize', 0.4, 7), ('Solarize', 0.2, 4)),
    (('Solarize', 0.6, 5), ('AutoContrast', 0.6, 5)),
    (('Invert', 0.6, 4), ('Equalize', 1.0, 8)),
    (('Color', 0.6, 4), ('Contrast', 1.0, 8)),
    (('Equalize', 0.8, 8), ('Equalize', 0.6, 3)),
]

_LEVELS = 10


def _warp(img: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Affine warp with ``matrix`` mapping output pixel coordinates to input coordinates."""
    h, w = img.shape[:2]
    return cv2.warpAffine(img, matrix.astype(np.float64), (w, h),
                          flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=FILL)


def shear_x(img: np.ndarray, shear: float) -> np.ndarray:
    """Output pixel (x, y) takes input pixel (x + shear * y, y)."""
    return _warp(img, np.array([[1, shear, 0], [0, 1, 0]]))


def shear_y(img: np.ndarray, shear: float) -> np.ndarray:
    """Output pixel (x, y) takes input pixel (x, y + shear * x)."""
    return _warp(img, np.array([[1, 0, 0], [shear, 1, 0]]))


def translate_x(img: np.ndarray, pixels: float) -> np.ndarray:
    """Output pixel (x, y) takes input pixel (x + pixels, y): content moves left for pixels > 0."""
    return _warp(img, np.array([[1, 0, pixels], [0, 1, 0]]))


def translate_y(img: np.ndarray, pixels: float) -> np.ndarray:
    """Output pixel (x, y) takes input pixel (x, y + pixels): content moves up for pixels > 0."""
    return _warp(img, np.array([[1, 0, 0], [0, 1, pixels]]))


def rotate(img: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate counter-clockwise about the image centre (like ``PIL.Image.rotate``)."""
    h, w = img.shape[:2]
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), degrees, 1.0)
    return cv2.warpAffine(img, matrix, (w, h), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=FILL)


def _blend(degenerate: np.ndarray, img: np.ndarray, factor: float) -> np.ndarray:
    """``degenerate + factor * (img - degenerate)``, saturated to uint8 (PIL's ImageEnhance)."""
    return cv2.addWeighted(img, float(factor), degenerate, float(1.0 - factor), 0.0)


def _luma(img: np.ndarray) -> np.ndarray:
    """PIL's ``convert('L')``: ITU-R 601-2 luma, rounded."""
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def color(img: np.ndarray, factor: float) -> np.ndarray:
    """Saturation: blend with the grey version (factor 0 = grey, 1 = identity)."""
    gray = cv2.cvtColor(_luma(img), cv2.COLOR_GRAY2RGB)
    return _blend(gray, img, factor)


def contrast(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend with a flat image at the mean luma (factor 0 = flat grey)."""
    mean = int(float(_luma(img).mean()) + 0.5)
    return cv2.addWeighted(img, float(factor), img, 0.0, mean * (1.0 - float(factor)))


def brightness(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend with black (factor 0 = black)."""
    return cv2.addWeighted(img, float(factor), img, 0.0, 0.0)


_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13.0


def sharpness(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend with PIL's SMOOTH-filtered image (border pixels kept), factor 0 = smoothed."""
    smooth = cv2.filter2D(img, -1, _SMOOTH, borderType=cv2.BORDER_REPLICATE)
    smooth[0, :] = img[0, :]
    smooth[-1, :] = img[-1, :]
    smooth[:, 0] = img[:, 0]
    smooth[:, -1] = img[:, -1]
    return _blend(smooth, img, factor)


def posterize(img: np.ndarray, bits: int) -> np.ndarray:
    """Keep the ``bits`` most significant bits of every channel."""
    mask = (0xFF << (8 - int(bits))) & 0xFF
    return np.bitwise_and(img, np.uint8(mask))


def solarize(img: np.ndarray, threshold: float) -> np.ndarray:
    """Invert every value ``>= threshold``."""
    values = np.arange(256)
    lut = np.where(values < threshold, values, 255 - values).astype(np.uint8)
    return cv2.LUT(img, lut)


def invert(img: np.ndarray, _unused: float | None = None) -> np.ndarray:
    """``255 - img``."""
    return cv2.bitwise_not(img)


def _per_channel_lut(img: np.ndarray, luts: np.ndarray) -> np.ndarray:
    """Apply a (3, 256) uint8 table, one row per channel."""
    return cv2.LUT(img, np.ascontiguousarray(luts.T.reshape(256, 1, 3)))


def autocontrast(img: np.ndarray, _unused: float | None = None) -> np.ndarray:
    """Stretch each channel so its minimum maps to 0 and its maximum to 255 (PIL, cutoff 0)."""
    values = np.arange(256, dtype=np.float64)
    luts = np.empty((3, 256), np.uint8)
    for c, plane in enumerate(cv2.split(img)):
        lo, hi = (int(v) for v in cv2.minMaxLoc(plane)[:2])
        if hi <= lo:
            luts[c] = values
            continue
        scale = 255.0 / (hi - lo)
        luts[c] = np.clip((values * scale + (-lo * scale)).astype(np.int64), 0, 255)
    return _per_channel_lut(img, luts)


def equalize(img: np.ndarray, _unused: float | None = None) -> np.ndarray:
    """Histogram equalisation per channel with PIL's ``ImageOps.equalize`` rule."""
    luts = np.empty((3, 256), np.uint8)
    identity = np.arange(256)
    for c in range(3):
        hist = cv2.calcHist([img], [c], None, [256], [0, 256]).ravel().astype(np.int64)
        nonzero = hist[hist > 0]
        step = (int(nonzero.sum()) - int(nonzero[-1])) // 255 if nonzero.size > 1 else 0
        if step == 0:
            luts[c] = identity
            continue
        before = np.concatenate([[0], np.cumsum(hist)[:-1]])
        luts[c] = np.minimum((step // 2 + before) // step, 255)
    return _per_channel_lut(img, luts)


OPS: Dict[str, Callable[[np.ndarray, float | None], np.ndarray]] = {
    'ShearX': shear_x, 'ShearY': shear_y, 'TranslateX': translate_x, 'TranslateY': translate_y,
    'Rotate': rotate, 'Color': color, 'Contrast': contrast, 'Brightness': brightness,
    'Sharpness': sharpness, 'Posterize': posterize, 'Solarize': solarize,
    'AutoContrast': autocontrast, 'Equalize': equalize, 'Invert': invert,
}

_SIGNED = {'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate', 'Color', 'Contrast',
           'Brightness', 'Sharpness'}


def magnitude_to_arg(name: str, level: int, size: Tuple[int, int] = (331, 331),
                     sign: float = 1.0) -> float | None:
    """The argument of op ``name`` at magnitude ``level`` (0..9), before any random sign.

    Args:
        name: a key of :data:`OPS`.
        level: magnitude level, 0..9.
        size: (height, width) of the image, for translations.
        sign: +1 or -1, applied to the signed operations.
    """
    if not 0 <= level < _LEVELS:
        raise ValueError(f'magnitude level must be in [0, {_LEVELS}), got {level}')
    frac = level / (_LEVELS - 1)
    if name in ('ShearX', 'ShearY'):
        return sign * 0.3 * frac
    if name == 'TranslateX':
        return sign * 150.0 / 331.0 * frac * size[1]
    if name == 'TranslateY':
        return sign * 150.0 / 331.0 * frac * size[0]
    if name == 'Rotate':
        return sign * 30.0 * frac
    if name in ('Color', 'Contrast', 'Brightness', 'Sharpness'):
        return 1.0 + sign * 0.9 * frac
    if name == 'Posterize':
        return int(round(8 - 4 * frac))
    if name == 'Solarize':
        return 256.0 * (1.0 - frac)
    if name in ('AutoContrast', 'Equalize', 'Invert'):
        return None
    raise KeyError(f'unknown AutoAugment op {name!r}; known: {sorted(OPS)}')


def apply_op(img: np.ndarray, name: str, level: int, sign: float = 1.0) -> np.ndarray:
    """Apply op ``name`` at magnitude ``level`` to an (H, W, 3) uint8 array."""
    arg = magnitude_to_arg(name, level, img.shape[:2], sign)
    return OPS[name](img, arg)


class AutoAugment:
    """Random sub-policy of an AutoAugment policy per image.

    Args:
        policy: sub-policies of ``(name, probability, level)`` pairs; default the ImageNet policy.
    """

    def __init__(self, policy: Sequence = IMAGENET_POLICY):
        for sub in policy:
            for name, prob, level in sub:
                magnitude_to_arg(name, level)  # validates name and level
                if not 0.0 <= prob <= 1.0:
                    raise ValueError(f'probability of {name} must be in [0, 1], got {prob}')
        self.policy = [tuple(sub) for sub in policy]

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment ``img`` ((H, W, 3) uint8 RGB) with randomness from ``rng``."""
        sub = self.policy[rng.integers(len(self.policy))]
        for name, prob, level in sub:
            if rng.random() < prob:
                sign = -1.0 if (name in _SIGNED and rng.random() < 0.5) else 1.0
                img = apply_op(img, name, level, sign)
        return img
