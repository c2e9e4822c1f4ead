"""AutoAugment (Cubuk et al., CVPR 2019) ImageNet policy as the authors' training script runs it.

The authors' ``scripts/gluon/train.py`` applies ``resnest.gluon``'s ``AugmentationBlock`` with
``autoaug_imagenet_policies()``: the 25 sub-policies of the AutoAugment paper (appendix,
Table 9), each two operations ``(name, probability, magnitude level)``, with the magnitude
conventions of Fast AutoAugment and the operations of PIL. One sub-policy is drawn uniformly per
image and each of its operations runs with its probability. This module reproduces that table
and every operation pixel for pixel.

Levels run ``0 .. 10`` and map to arguments as the authors' policy maps them (``int(...)`` as
there; the sign of the geometric operations is random):

================  ==============================================================
ShearX/Y          shear ``level * 0.3 / 10`` (random sign), bicubic, black fill
TranslateX/Y      ``level * 0.45 / 10`` of the image side (random sign), bicubic,
                  black fill (not in the ImageNet policy)
Rotate            ``int(level * 30 / 10)`` degrees (random sign), nearest, black fill
Color, Contrast,  enhancement factor ``level * 1.8 / 10 + 0.1`` (PIL's ImageEnhance;
Brightness,       level 0 is a factor of 0.1, not the identity)
Sharpness
Posterize2        keep ``4 - int(level * 4 / 10)`` bits (the ImageNet policy's levels 5..8
                  keep 2 or 1 bits)
Solarize          invert pixels ``>= 256 - int(level * 256 / 10)``
AutoContrast,     no magnitude (PIL's ImageOps)
Equalize, Invert
================  ==============================================================

All operations take and return ``(H, W, 3)`` uint8 RGB arrays; the geometric and enhancement
operations run on PIL, the table operations (Posterize2, Solarize, Invert, AutoContrast,
Equalize) with OpenCV, bit-exact with PIL's.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image, ImageEnhance

__all__ = ['IMAGENET_POLICY', 'OPS', 'AutoAugment', 'apply_op', 'magnitude_to_arg']

# (op, probability, magnitude level): the authors' ImageNet policy, in its order.
IMAGENET_POLICY: List[Tuple[Tuple[str, float, int], Tuple[str, float, int]]] = [
    (('Posterize2', 0.4, 8), ('Rotate', 0.6, 9)),
    (('Solarize', 0.6, 5), ('AutoContrast', 0.6, 5)),
    (('Equalize', 0.8, 8), ('Equalize', 0.6, 3)),
    (('Posterize2', 0.6, 7), ('Posterize2', 0.6, 6)),
    (('Equalize', 0.4, 7), ('Solarize', 0.2, 4)),
    (('Equalize', 0.4, 4), ('Rotate', 0.8, 8)),
    (('Solarize', 0.6, 3), ('Equalize', 0.6, 7)),
    (('Posterize2', 0.8, 5), ('Equalize', 1.0, 2)),
    (('Rotate', 0.2, 3), ('Solarize', 0.6, 8)),
    (('Equalize', 0.6, 8), ('Posterize2', 0.4, 6)),
    (('Rotate', 0.8, 8), ('Color', 0.4, 0)),
    (('Rotate', 0.4, 9), ('Equalize', 0.6, 2)),
    (('Equalize', 0.0, 7), ('Equalize', 0.8, 8)),
    (('Invert', 0.6, 4), ('Equalize', 1.0, 8)),
    (('Color', 0.6, 4), ('Contrast', 1.0, 8)),
    (('Rotate', 0.8, 8), ('Color', 1.0, 0)),
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

MAX_LEVEL = 10


def _pil_op(fn: Callable[[Image.Image, float | None], Image.Image]
            ) -> Callable[[np.ndarray, float | None], np.ndarray]:
    def op(img: np.ndarray, arg: float | None = None) -> np.ndarray:
        return np.asarray(fn(Image.fromarray(img, 'RGB'), arg))

    op.__name__ = fn.__name__
    op.__doc__ = fn.__doc__
    return op


def _affine(img: Image.Image, coefficients: Tuple[float, ...]) -> Image.Image:
    return img.transform(img.size, Image.AFFINE, coefficients, Image.BICUBIC)


@_pil_op
def shear_x(img: Image.Image, shear: float) -> Image.Image:
    """Output pixel (x, y) takes input pixel (x + shear * y, y)."""
    return _affine(img, (1, shear, 0, 0, 1, 0))


@_pil_op
def shear_y(img: Image.Image, shear: float) -> Image.Image:
    """Output pixel (x, y) takes input pixel (x, y + shear * x)."""
    return _affine(img, (1, 0, 0, shear, 1, 0))


@_pil_op
def translate_x(img: Image.Image, pixels: float) -> Image.Image:
    """Output pixel (x, y) takes input pixel (x + pixels, y): content moves left for pixels > 0."""
    return _affine(img, (1, 0, pixels, 0, 1, 0))


@_pil_op
def translate_y(img: Image.Image, pixels: float) -> Image.Image:
    """Output pixel (x, y) takes input pixel (x, y + pixels): content moves up for pixels > 0."""
    return _affine(img, (1, 0, 0, 0, 1, pixels))


@_pil_op
def rotate(img: Image.Image, degrees: float) -> Image.Image:
    """Rotate counter-clockwise about the image centre (nearest neighbour)."""
    return img.rotate(degrees)


@_pil_op
def color(img: Image.Image, factor: float) -> Image.Image:
    """Saturation: blend with the grey version (factor 0 = grey, 1 = identity)."""
    return ImageEnhance.Color(img).enhance(factor)


@_pil_op
def contrast(img: Image.Image, factor: float) -> Image.Image:
    """Blend with a flat image at the mean luma (factor 0 = flat grey)."""
    return ImageEnhance.Contrast(img).enhance(factor)


@_pil_op
def brightness(img: Image.Image, factor: float) -> Image.Image:
    """Blend with black (factor 0 = black)."""
    return ImageEnhance.Brightness(img).enhance(factor)


@_pil_op
def sharpness(img: Image.Image, factor: float) -> Image.Image:
    """Blend with the smoothed image (factor 0 = smoothed)."""
    return ImageEnhance.Sharpness(img).enhance(factor)


# The table operations below give PIL's ImageOps results bit for bit, with OpenCV on the array
# (no conversion to and from a PIL image).


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
    """Stretch each channel so its minimum maps to 0 and its maximum to 255 (PIL's, cutoff 0)."""
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
    'Sharpness': sharpness, 'Posterize2': posterize, 'Solarize': solarize,
    'AutoContrast': autocontrast, 'Equalize': equalize, 'Invert': invert,
}

_SIGNED = {'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate'}
_NO_ARG = {'AutoContrast', 'Equalize', 'Invert'}
# (level -> value, range of the value): the authors' policy stores each magnitude as a
# fraction of the operation's range and turns it back into a value when it applies the
# operation; the same round trip here gives the same floating-point argument.
_MAGNITUDES: Dict[str, Tuple[Callable[[int], float], Tuple[float, float]]] = {
    'ShearX': (lambda level: level * 0.3 / MAX_LEVEL, (-0.3, 0.3)),
    'ShearY': (lambda level: level * 0.3 / MAX_LEVEL, (-0.3, 0.3)),
    'TranslateX': (lambda level: level * 0.45 / MAX_LEVEL, (-0.45, 0.45)),
    'TranslateY': (lambda level: level * 0.45 / MAX_LEVEL, (-0.45, 0.45)),
    'Rotate': (lambda level: int(level * 30 / MAX_LEVEL), (-30, 30)),
    'Solarize': (lambda level: 256 - int(level * 256 / MAX_LEVEL), (0, 256)),
    'Posterize2': (lambda level: 4 - int(level * 4 / MAX_LEVEL), (0, 4)),
    'Contrast': (lambda level: level * 1.8 / MAX_LEVEL + 0.1, (0.1, 1.9)),
    'Color': (lambda level: level * 1.8 / MAX_LEVEL + 0.1, (0.1, 1.9)),
    'Brightness': (lambda level: level * 1.8 / MAX_LEVEL + 0.1, (0.1, 1.9)),
    'Sharpness': (lambda level: level * 1.8 / MAX_LEVEL + 0.1, (0.1, 1.9)),
}


def magnitude_to_arg(name: str, level: int, size: Tuple[int, int] = (331, 331),
                     sign: float = 1.0) -> float | None:
    """The argument of op ``name`` at magnitude ``level`` (0..10).

    Args:
        name: a key of :data:`OPS`.
        level: magnitude level, 0..10.
        size: (height, width) of the image, for translations.
        sign: +1 or -1, applied to the geometric operations.
    """
    if name not in OPS:
        raise KeyError(f'unknown AutoAugment op {name!r}; known: {sorted(OPS)}')
    if not 0 <= level <= MAX_LEVEL:
        raise ValueError(f'magnitude level must be in [0, {MAX_LEVEL}], got {level}')
    if name in _NO_ARG:
        return None
    value, (low, high) = _MAGNITUDES[name]
    arg = float(value(level) - low) / (high - low) * (high - low) + low
    if name in _SIGNED:
        arg = sign * arg
    if name == 'TranslateX':
        arg *= size[1]
    elif name == 'TranslateY':
        arg *= size[0]
    elif name == 'Posterize2':
        arg = int(arg)
    return arg


def apply_op(img: np.ndarray, name: str, level: int, sign: float = 1.0) -> np.ndarray:
    """Apply op ``name`` at magnitude ``level`` to an (H, W, 3) uint8 array."""
    arg = magnitude_to_arg(name, level, img.shape[:2], sign)
    return OPS[name](np.ascontiguousarray(img), arg)


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
            if rng.random() <= prob:
                sign = -1.0 if (name in _SIGNED and rng.random() < 0.5) else 1.0
                img = apply_op(img, name, level, sign)
        return img
