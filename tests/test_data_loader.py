"""Training/validation loaders on real RecordIO files: transforms, sharding, workers, corruption."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
import pytest

from gluon_resnest.data import RecordFile, TrainLoader, TrainTransform, ValLoader
from gluon_resnest.data import loader as loader_mod
from gluon_resnest.data.records import pack_image_record
from gluon_resnest.data.transforms import EIGVAL, EIGVEC, decode_image, random_crop_box

N = 50
CORRUPT = {3: 'truncated JPEG', 7: 'cannot decode', 11: 'bad magic', 13: 'empty image'}
PLAIN = dict(crop_scale=(1.0, 1.0), hflip=False, color_jitter=0.0, pca_noise=0.0,
             mean=(0, 0, 0), std=(1, 1, 1))


def _image(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    h, w = 30 + (i % 5) * 6, 40 + (i % 3) * 10
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 5 + i * 9) % 256, (y * 7) % 256, (x + y + i) % 256], -1).astype(float)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def _jpeg(i: int) -> bytes:
    return cv2.imencode('.jpg', _image(i)[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


@pytest.fixture(scope='module')
def recs(tmp_path_factory) -> dict:
    """A clean .rec (label = record index) and a copy with corrupt records."""
    d = tmp_path_factory.mktemp('rec')
    clean = str(d / 'clean.rec')
    writer = mx.recordio.MXIndexedRecordIO(str(d / 'clean.idx'), clean, 'w')
    for i in range(N):
        writer.write_idx(i, pack_image_record(i, i, _jpeg(i)))
    writer.close()
    bad = str(d / 'bad.rec')
    writer = mx.recordio.MXIndexedRecordIO(str(d / 'bad.idx'), bad, 'w')
    for i in range(N):
        data = _jpeg(i)
        if i == 3:
            data = data[:len(data) // 2]
        elif i == 7:
            data = b'\xff\xd8' + b'garbage' * 50 + b'\xff\xd9'
        elif i == 13:
            data = b''
        writer.write_idx(i, pack_image_record(i, i, data))
    writer.close()
    offset = int(RecordFile(bad).offsets[11])
    with open(bad, 'r+b') as f:
        f.seek(offset)
        f.write(b'\x00\x00\x00\x00')
    return {'clean': clean, 'bad': bad}


def _decoded(rec: str, i: int) -> np.ndarray:
    return decode_image(mx.recordio.unpack(RecordFile(rec).read(i))[1])


@pytest.mark.parametrize('workers', [0, 2])
def test_plain_settings_reduce_to_a_resize_of_the_whole_image(recs, workers: int):
    loader = TrainLoader(recs['clean'], 8, input_size=32, num_workers=workers, **PLAIN)
    assert len(loader) == N // 8 and loader.num_samples == N
    seen = []
    for data, label in loader:
        assert data.shape == (8, 3, 32, 32) and data.dtype == np.float32
        assert label.dtype == np.float32
        for x, i in zip(data.asnumpy(), label.asnumpy().astype(int)):
            ref = cv2.resize(_decoded(recs['clean'], i), (32, 32), interpolation=cv2.INTER_LINEAR)
            np.testing.assert_allclose(x, ref.transpose(2, 0, 1), atol=1e-4)
            seen.append(i)
    assert seen == loader.indices()[:len(seen)]
    loader.close()


def test_training_shards_are_disjoint_covering_and_equal(recs):
    k, B = 3, 4
    loaders = [TrainLoader(recs['clean'], B, input_size=16, rank=r, world_size=k, seed=9,
                           num_workers=0, **PLAIN) for r in range(k)]
    assert {len(ld) for ld in loaders} == {17 // B} and {ld.num_samples for ld in loaders} == {17}
    for epoch in (0, 1):
        shards = []
        for ld in loaders:
            ld.set_epoch(epoch)
            labels = np.concatenate([lab.asnumpy() for _, lab in ld]).astype(int).tolist()
            assert labels == ld.indices()[:len(labels)]
            shards.append(ld.indices())
        flat = [i for s in shards for i in s]
        assert set(flat) == set(range(N)) and len(flat) - N == 1  # 51 slots: one pad
    assert loaders[0].indices(0) != loaders[0].indices(1)


def test_workers_give_the_same_augmented_batches_as_inline(recs):
    kwargs = dict(input_size=24, seed=3, auto_augment=True)
    inline = TrainLoader(recs['clean'], 10, num_workers=0, **kwargs)
    pooled = TrainLoader(recs['clean'], 10, num_workers=2, **kwargs)
    for epoch in (0, 2):
        inline.set_epoch(epoch)
        pooled.set_epoch(epoch)
        for (a, la), (b, lb) in zip(inline, pooled):
            np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
            np.testing.assert_array_equal(la.asnumpy(), lb.asnumpy())
    x = a.asnumpy()
    assert np.isfinite(x).all() and -4 < x.mean() < 4 and x.std() > 0.1
    pooled.close()


def test_abandoned_epoch_does_not_disturb_the_next(recs, monkeypatch):
    monkeypatch.setattr(loader_mod, '_shm_dir', lambda nbytes: None)  # queue transport
    loader = TrainLoader(recs['clean'], 5, input_size=16, num_workers=2, prefetch=4)
    ref = [d.asnumpy() for d, _ in TrainLoader(recs['clean'], 5, input_size=16, num_workers=0)]
    for _ in zip(range(2), loader):  # leave the epoch after two batches
        pass
    got = [d.asnumpy() for d, _ in loader]
    assert loader._pool.transport == 'queue'
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a, b)
    loader.close()


def test_corrupt_records_are_reported_and_skipped(recs, caplog):
    loader = TrainLoader(recs['bad'], 8, input_size=16, num_workers=2, **PLAIN)
    labels = []
    for data, label in loader:
        assert data.shape[0] == 8  # replaced, so batches stay full
        labels += label.asnumpy().astype(int).tolist()
    assert not set(labels) & set(CORRUPT)
    assert len(labels) == 48
    skipped = {key: reason for _, key, reason in loader.skipped}
    assert set(skipped) <= set(CORRUPT) and len(skipped) >= 2  # only 2 records are left out
    for key, reason in skipped.items():
        assert CORRUPT[key] in reason, (key, reason)
    assert all(path == recs['bad'] for path, _, _ in loader.skipped)
    assert 'skipping corrupt record' in caplog.text
    loader.close()

    val = ValLoader(recs['bad'], 8, eval_crop=16, num_workers=2)
    got = np.concatenate([lab.asnumpy() for _, lab in val]).astype(int).tolist()
    assert got == [i for i in range(N) if i not in CORRUPT]  # dropped, nothing else lost
    assert {key for _, key, _ in val.skipped} == set(CORRUPT)
    val.close()


@pytest.mark.parametrize('k', [1, 3, 4])
def test_validation_shards_count_every_image_once(recs, k: int):
    labels, sizes = [], []
    for r in range(k):
        val = ValLoader(recs['clean'], 7, eval_crop=16, rank=r, world_size=k, num_workers=0)
        batches = [(d, lab) for d, lab in val]
        assert len(batches) == len(val)
        sizes += [d.shape[0] for d, _ in batches]
        labels += np.concatenate([lab.asnumpy() for _, lab in batches]).astype(int).tolist()
        assert sum(d.shape[0] for d, _ in batches) == val.num_samples
    assert sorted(labels) == list(range(N)) and len(labels) == N
    if k == 1:
        assert sizes == [7] * 7 + [1]  # last partial batch kept


def test_validation_transform_is_resize_then_center_crop(recs):
    mean, std = (10.0, 20.0, 30.0), (2.0, 3.0, 4.0)
    val = ValLoader(recs['clean'], 4, eval_crop=28, num_workers=0, mean=mean, std=std)
    data, label = next(iter(val))
    i = int(label.asnumpy()[1])
    assert i == 1
    img = _decoded(recs['clean'], i)
    h, w = img.shape[:2]
    short = 32  # ceil(28 / 0.875)
    # The long side in proportion, rounded down; bilinear (the authors' verify.py, MXNet).
    size = (w * short // min(h, w), h * short // min(h, w))
    big = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
    y0, x0 = (size[1] - 28) // 2, (size[0] - 28) // 2
    ref = (big[y0:y0 + 28, x0:x0 + 28] - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(data.asnumpy()[1], ref.transpose(2, 0, 1), atol=1e-4)


def test_colour_matrix_equals_the_steps_applied_one_by_one():
    img = _image(4)
    t = TrainTransform(32, color_jitter=0.4, pca_noise=0.1)
    matrix = t.colour_matrix(img, np.random.default_rng(11))
    folded = img.reshape(-1, 3) @ matrix[:, :3].T + matrix[:, 3]
    rng = np.random.default_rng(11)
    gray = np.array([0.299, 0.587, 0.114])
    x = img.reshape(-1, 3).astype(np.float64)
    for op in rng.permutation(3):
        f = rng.uniform(0.6, 1.4)
        if op == 0:
            x = x * f
        elif op == 1:
            x = x * f + (1 - f) * (x @ gray).mean()
        else:
            x = x * f + (1 - f) * (x @ gray)[:, None]
    x = x + EIGVEC @ (rng.normal(0, 0.1, 3) * EIGVAL)
    x = (x - t.mean) / t.std
    np.testing.assert_allclose(folded, x, atol=1e-6)


def test_random_crop_box_respects_scale_and_ratio():
    rng = np.random.default_rng(0)
    areas, ratios = [], []
    for _ in range(500):
        y0, x0, h, w = random_crop_box(375, 500, (0.08, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= y0 and y0 + h <= 375 and 0 <= x0 and x0 + w <= 500
        areas.append(h * w / (375 * 500))
        ratios.append(w / h)
    assert 0.07 < min(areas) and max(areas) <= 1.0 and np.mean(areas) > 0.3
    assert 0.72 < min(ratios) and max(ratios) < 1.36
    assert random_crop_box(375, 500, (1.0, 1.0), (3 / 4, 4 / 3), rng) == (0, 0, 375, 500)
    assert random_crop_box(100, 400, (0.9, 1.0), (3 / 4, 4 / 3), rng, attempts=0) == \
        (0, 133, 100, 133)  # fallback: center crop at the widest allowed ratio


def test_bicubic_above_256():
    assert TrainTransform(320).interp == cv2.INTER_CUBIC
    assert TrainTransform(224).interp == cv2.INTER_LINEAR


def test_bad_arguments(recs, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match='no such file'):
        TrainLoader(str(tmp_path / 'missing.rec'), 4)
    with pytest.raises(ValueError, match='cannot fill one batch'):
        TrainLoader(recs['clean'], 20, rank=0, world_size=4)
    with pytest.raises(ValueError, match='rank'):
        TrainLoader(recs['clean'], 4, rank=2, world_size=2)
    shutil.copy(recs['clean'], tmp_path / 'x.rec')
    (tmp_path / 'x.idx').write_text('0\tnot-a-number\n')
    with pytest.raises(ValueError, match='key<TAB>offset'):
        ValLoader(str(tmp_path / 'x.rec'), 4)


@pytest.mark.slow
def test_spawned_workers(recs):
    loader = TrainLoader(recs['clean'], 10, input_size=16, num_workers=2, mp_context='spawn')
    inline = TrainLoader(recs['clean'], 10, input_size=16, num_workers=0)
    for (a, _), (b, _) in zip(loader, inline):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
    loader.close()


def test_a_file_of_corrupt_records_fails_loudly(tmp_path: Path):
    rec = str(tmp_path / 'junk.rec')
    writer = mx.recordio.MXIndexedRecordIO(str(tmp_path / 'junk.idx'), rec, 'w')
    for i in range(40):
        writer.write_idx(i, pack_image_record(i, i, b'not a jpeg'))
    writer.close()
    loader = TrainLoader(rec, 4, input_size=16, num_workers=2)
    with pytest.raises(RuntimeError, match='corrupt records around one batch'):
        for _ in loader:
            pass
    loader.close()
