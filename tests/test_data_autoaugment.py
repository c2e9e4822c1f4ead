"""AutoAugment operations on known inputs (the comparison with the authors' policy is in
test_authors_data.py)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from gluon_resnest.data import autoaugment as aa


@pytest.fixture()
def img() -> np.ndarray:
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:40, 0:56]
    base = np.stack([x * 3 + 20, y * 4 + 30, (x * y) % 200 + 10], axis=-1).astype(np.float64)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def _pil(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(arr, 'RGB')


def test_lut_ops_match_pil_exactly(img: np.ndarray):
    low_contrast = (img // 3 + 60).astype(np.uint8)
    np.testing.assert_array_equal(aa.autocontrast(low_contrast),
                                  np.asarray(ImageOps.autocontrast(_pil(low_contrast))))
    np.testing.assert_array_equal(aa.equalize(img), np.asarray(ImageOps.equalize(_pil(img))))
    np.testing.assert_array_equal(aa.invert(img), 255 - img)
    for threshold in (0, 100.5, 128, 256):
        np.testing.assert_array_equal(aa.solarize(img, threshold),
                                      np.asarray(ImageOps.solarize(_pil(img), threshold)))
    for bits in (1, 2, 4, 8):
        np.testing.assert_array_equal(aa.posterize(img, bits),
                                      np.asarray(ImageOps.posterize(_pil(img), bits)))


def test_flat_channels_are_left_alone(img: np.ndarray):
    flat = img.copy()
    flat[..., 1] = 77
    out = aa.autocontrast(flat)
    assert (out[..., 1] == 77).all()
    assert out[..., 0].min() == 0 and out[..., 0].max() == 255
    assert (aa.equalize(flat)[..., 1] == 77).all()


@pytest.mark.parametrize('name,enhancer', [('Color', ImageEnhance.Color),
                                           ('Contrast', ImageEnhance.Contrast),
                                           ('Brightness', ImageEnhance.Brightness),
                                           ('Sharpness', ImageEnhance.Sharpness)])
@pytest.mark.parametrize('factor', [0.1, 0.5, 1.0, 1.9])
def test_enhance_ops_match_pil(img: np.ndarray, name: str, enhancer, factor: float):
    ours = aa.OPS[name](img, factor).astype(np.int32)
    ref = np.asarray(enhancer(_pil(img)).enhance(factor)).astype(np.int32)
    assert np.abs(ours - ref).max() <= 2
    assert np.abs(ours - ref).mean() < 0.6


def test_translate_moves_content_by_whole_pixels(img: np.ndarray):
    out = aa.translate_x(img, 5)
    np.testing.assert_array_equal(out[:, :-5], img[:, 5:])
    assert (out[:, -5:] == 0).all()  # uncovered area black
    out = aa.translate_y(img, -7)
    np.testing.assert_array_equal(out[7:], img[:-7])
    assert (out[:7] == 0).all()


def test_shear_x_slants_a_vertical_line():
    line = np.zeros((50, 60, 3), np.uint8)
    line[:, 30] = 255
    out = aa.shear_x(line, 0.3)
    for y in range(0, 50, 7):  # output x + 0.3 y = 30
        cols = np.flatnonzero(out[y, :, 0] >= 128)  # bicubic: the line spreads a little
        assert cols.size >= 1 and abs(cols.mean() - (30 - 0.3 * y)) <= 1.0
    assert (out[49, 50:] == 0).all()  # uncovered area black
    out = aa.shear_y(line.transpose(1, 0, 2).copy(), 0.3)  # horizontal line: y + 0.3 x = 30
    for x in range(0, 50, 7):
        rows = np.flatnonzero(out[:, x, 0] >= 128)
        assert rows.size >= 1 and abs(rows.mean() - (30 - 0.3 * x)) <= 1.0


@pytest.mark.parametrize('degrees', [90.0, 30.0, -30.0])
def test_rotate_is_counter_clockwise_about_the_centre(degrees: float):
    h = w = 41
    dot = np.zeros((h, w, 3), np.uint8)
    c, r = 20, 12
    dot[c, c + r] = 255  # right of the centre
    out = aa.rotate(dot, degrees)
    ys, xs = np.nonzero(out[..., 0] == 255)
    t = np.deg2rad(degrees)
    assert ys.size >= 1
    assert abs(xs.mean() - (c + r * np.cos(t))) <= 1.0
    assert abs(ys.mean() - (c - r * np.sin(t))) <= 1.0
    if abs(degrees) == 30.0:  # the corners come from outside the image
        assert (out[0, 0] == 0).all() and (out[-1, -1] == 0).all()


def test_rotate_and_zero_geometric_magnitudes_are_identities(img: np.ndarray):
    np.testing.assert_array_equal(aa.rotate(img, 0.0), img)
    for name in ('ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate', 'Solarize'):
        np.testing.assert_array_equal(aa.apply_op(img, name, 0), img, err_msg=name)


def test_magnitude_levels_follow_the_authors_policy():
    assert aa.magnitude_to_arg('Rotate', 9) == 27.0  # int(9 * 30 / 10)
    assert aa.magnitude_to_arg('Rotate', 9, sign=-1) == -27.0
    assert aa.magnitude_to_arg('ShearX', 10) == pytest.approx(0.3)
    assert aa.magnitude_to_arg('ShearX', 5) == pytest.approx(0.15)
    assert aa.magnitude_to_arg('TranslateX', 10, (100, 300)) == pytest.approx(135.0)
    # Enhancement factors 0.1 .. 1.9, no random sign: level 0 nearly removes the colour.
    assert aa.magnitude_to_arg('Color', 0) == pytest.approx(0.1)
    assert aa.magnitude_to_arg('Color', 10) == pytest.approx(1.9)
    assert aa.magnitude_to_arg('Contrast', 8, sign=-1) == pytest.approx(1.54)
    # Posterize2 keeps 4 - int(level * 4 / 10) bits.
    assert [aa.magnitude_to_arg('Posterize2', lv) for lv in (0, 5, 6, 7, 8, 10)] == \
        [4, 2, 2, 2, 1, 0]
    assert aa.magnitude_to_arg('Solarize', 5) == 128.0
    assert aa.magnitude_to_arg('Equalize', 3) is None
    with pytest.raises(ValueError):
        aa.magnitude_to_arg('Rotate', 11)
    with pytest.raises(KeyError, match='unknown'):
        aa.magnitude_to_arg('SamplePairing', 1)


def test_imagenet_policy_has_the_papers_25_sub_policies():
    policy = aa.IMAGENET_POLICY
    assert len(policy) == 25 and all(len(sub) == 2 for sub in policy)
    assert policy[0] == (('Posterize2', 0.4, 8), ('Rotate', 0.6, 9))
    assert policy[18] == (('ShearX', 0.6, 5), ('Equalize', 1.0, 9))
    names = {op for sub in policy for op, _, _ in sub}
    assert names == {'Posterize2', 'Rotate', 'Solarize', 'AutoContrast', 'Equalize', 'Color',
                     'Contrast', 'Invert', 'Sharpness', 'ShearX'}
    aa.AutoAugment()  # validates every entry


def test_auto_augment_applies_sub_policies_with_their_probabilities(img: np.ndarray):
    always = aa.AutoAugment([(('Invert', 1.0, 0), ('Posterize2', 1.0, 9))])
    np.testing.assert_array_equal(always(img, np.random.default_rng(0)),
                                  aa.posterize(255 - img, 1))
    never = aa.AutoAugment([(('Invert', 0.0, 0), ('Rotate', 0.0, 9))])
    np.testing.assert_array_equal(never(img, np.random.default_rng(0)), img)
    policy = aa.AutoAugment()
    outs = [policy(img, np.random.default_rng(s)) for s in range(40)]
    assert all(o.shape == img.shape and o.dtype == np.uint8 for o in outs)
    np.testing.assert_array_equal(outs[5], policy(img, np.random.default_rng(5)))
    assert sum(not np.array_equal(o, img) for o in outs) > 25
    with pytest.raises(ValueError, match='probability'):
        aa.AutoAugment([(('Invert', 1.5, 0), ('Invert', 0.5, 0))])
