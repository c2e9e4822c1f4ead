"""The data side of the authors' training and evaluation: their AutoAugment policy and
operations (``resnest==0.0.5``: ``resnest.gluon.data_utils``, ``resnest.transforms``) and the
evaluation transform of their ``scripts/gluon/verify.py``."""
from __future__ import annotations

import math

import cv2
import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon.data.vision import transforms
from PIL import Image

from gluon_resnest.data import autoaugment as aa
from gluon_resnest.data.transforms import ValTransform, decode_image

data_utils = pytest.importorskip('resnest.gluon.data_utils')
authors_ops = pytest.importorskip('resnest.transforms')

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 200 / w + 20, y * 180 / h + 30, (x * y) % 180 + 40], axis=-1)
    return np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8)


# --- AutoAugment ----------------------------------------------------------------------------

def _their_arg(name: str, fraction: float) -> float:
    _, low, high = authors_ops.get_augment(name)
    return fraction * (high - low) + low


def test_policy_table_is_the_authors_operation_by_operation():
    theirs = data_utils.autoaug_imagenet_policies()
    assert len(aa.IMAGENET_POLICY) == len(theirs) == 25
    for i, (ours_sub, their_sub) in enumerate(zip(aa.IMAGENET_POLICY, theirs)):
        assert len(ours_sub) == len(their_sub) == 2
        for (name, prob, level), (their_name, their_prob, magnitude) in zip(ours_sub, their_sub):
            assert (name, prob) == (their_name, their_prob), i
            arg = aa.magnitude_to_arg(name, level)
            if arg is None:  # no magnitude: theirs carries the level along, unused
                assert level == magnitude, (i, name)
            else:
                assert arg == _their_arg(name, magnitude), (i, name, arg)


def _policy_ops() -> list[tuple[str, int]]:
    return sorted({(name, level) for sub in aa.IMAGENET_POLICY for name, _, level in sub})


@pytest.mark.parametrize('name,level', _policy_ops())
def test_every_policy_operation_gives_the_authors_pixels(name, level, monkeypatch):
    """Each operation at its policy magnitude, on the same image; the random sign of the
    geometric ones fixed (their mirror switch off, the sign put into the argument)."""
    monkeypatch.setattr(authors_ops, 'random_mirror', False)
    img = _image(45, 62)
    fraction = {(n, lv): m for sub_o, sub_t in zip(aa.IMAGENET_POLICY,
                                                   data_utils.autoaug_imagenet_policies())
                for (n, _, lv), (_, _, m) in zip(sub_o, sub_t)}[(name, level)]
    fn, _, _ = authors_ops.get_augment(name)
    arg = _their_arg(name, fraction)
    signs = (1.0, -1.0) if name in ('Rotate', 'ShearX') else (1.0,)
    for sign in signs:
        theirs = np.asarray(fn(Image.fromarray(img), sign * arg))
        np.testing.assert_array_equal(aa.apply_op(img, name, level, sign), theirs,
                                      err_msg=f'{name} {level} sign {sign}')


@pytest.mark.parametrize('name', ['ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate',
                                  'Color', 'Contrast', 'Brightness', 'Sharpness', 'Solarize',
                                  'Posterize2'])
def test_every_operation_at_every_level_gives_the_authors_pixels(name, monkeypatch):
    monkeypatch.setattr(authors_ops, 'random_mirror', False)
    img = _image(37, 50, seed=1)
    fn, low, high = authors_ops.get_augment(name)
    # Levels 0..9, those of the paper's policies (at 10 the round trip through the range
    # overshoots 1.9 and 0.45 by an ulp, which their operations refuse).
    for level in range(aa.MAX_LEVEL):
        value = aa.magnitude_to_arg(name, level, (1, 1))  # theirs: a fraction of the side
        theirs = np.asarray(fn(Image.fromarray(img), value))
        np.testing.assert_array_equal(aa.apply_op(img, name, level), theirs,
                                      err_msg=f'{name} {level}')


# --- evaluation transform -------------------------------------------------------------------

def _their_eval_crop(img: np.ndarray, crop: int) -> np.ndarray:
    """verify.py's transform up to the tensor conversion, on an (H, W, 3) uint8 image."""
    if crop < 320:
        # MXNet's own transforms, as verify.py composes them.
        resize = int(math.ceil(crop / 0.875))
        pipeline = transforms.Compose([transforms.Resize(resize, keep_ratio=True),
                                       transforms.CenterCrop(crop)])
        return pipeline(mx.nd.array(img, dtype='uint8')).asnumpy()
    # Their ECenterCrop, written out: the centre square of crop / (crop + 32) of the short
    # side (PIL's crop box, rounded), resized to crop x crop with PIL's bicubic filter.
    h, w = img.shape[:2]
    side = float(crop) / (crop + 32) * min(w, h)
    top = int(round((h - side) / 2.0))
    left = int(round((w - side) / 2.0))
    square = Image.fromarray(img).crop((left, top, left + side, top + side))
    return np.asarray(square.resize((crop, crop), Image.BICUBIC))


@pytest.mark.parametrize('crop', [28, 224, 256, 320, 416])
@pytest.mark.parametrize('shape', [(375, 500), (500, 333), (360, 500), (300, 300), (97, 131)])
def test_evaluation_crop_is_verify_py_pixel_for_pixel(crop, shape):
    """The same JPEG through the same decoder (MXNet's imdecode, as ImageRecordDataset, and
    ours read the same pixels), then their transform and ours."""
    ok, encoded = cv2.imencode('.jpg', _image(*shape, seed=crop)[..., ::-1],
                               [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    decoded = decode_image(encoded.tobytes())
    np.testing.assert_array_equal(decoded, mx.image.imdecode(encoded.tobytes()).asnumpy())
    ours = ValTransform(crop, MEAN, STD)
    theirs = _their_eval_crop(decoded, crop)
    assert theirs.shape == (crop, crop, 3)
    np.testing.assert_array_equal(ours.crop_image(decoded), theirs)
    # Then ToTensor and Normalize (float rounding only).
    tensor = transforms.Compose([
        transforms.ToTensor(),
        transforms.Normalize([m / 255 for m in MEAN], [s / 255 for s in STD])])(
        mx.nd.array(theirs, dtype='uint8')).asnumpy()
    out = np.empty((3, crop, crop), np.float32)
    ours(decoded, out)
    np.testing.assert_allclose(out, tensor, atol=2e-5)


def test_long_side_is_rounded_down_as_mxnet_does():
    """500 x 360 at 224: the short side 256 and the long side int(500 * 256 / 360) = 355
    (rounding would give 356, and the centre crop would start a column later)."""
    img = _image(360, 500)
    ref = mx.nd.image.resize(mx.nd.array(img, dtype='uint8'), 256, True, 1)
    assert ref.shape == (256, 355, 3)
    np.testing.assert_array_equal(ValTransform(224, MEAN, STD).crop_image(img),
                                  ref.asnumpy()[16:240, 65:289])
