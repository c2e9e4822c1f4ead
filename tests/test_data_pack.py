"""Packing tool: format conversion, broken-file report, determinism, RecordIO compatibility."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from PIL import Image

from gluon_resnest.data import RecordFile
from gluon_resnest.data.pack import pack_entries, pack_folder, read_lst, scan_folder
from gluon_resnest.data.records import pack_image_record, unpack_image_record

REPO = Path(__file__).resolve().parents[1]


def _photo(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], axis=-1)
    return np.clip(base + rng.normal(0, 5, base.shape), 0, 255).astype(np.uint8)


def _stored_image(data: bytes) -> Image.Image:
    _, encoded = unpack_image_record(data)
    assert encoded[:2] == b'\xff\xd8', 'stored image is not a JPEG'
    img = Image.open(io.BytesIO(encoded))
    assert img.format == 'JPEG' and img.mode == 'RGB'
    return img


@pytest.fixture()
def mixed_folder(tmp_path: Path) -> Path:
    """3 classes holding every kind of input, plus broken files."""
    root = tmp_path / 'images'
    for name in ('cat', 'dog', 'zebra'):
        (root / name).mkdir(parents=True)
    (root / 'cat' / 'nested' / 'deeper').mkdir(parents=True)
    Image.fromarray(_photo(seed=1)).save(root / 'cat' / 'rgb.jpg', quality=92)
    Image.fromarray(_photo(seed=2)).save(root / 'cat' / 'nested' / 'deeper' / 'rgb.png')
    Image.fromarray(_photo()[..., 0]).save(root / 'cat' / 'gray.jpg')
    rgba = np.dstack([_photo(seed=3), np.full((48, 64), 255, np.uint8)])
    rgba[:, :8, 3] = 0  # transparent stripe -> white after compositing
    Image.fromarray(rgba, 'RGBA').save(root / 'dog' / 'rgba.png')
    cmyk = Image.new('CMYK', (64, 48), (255, 0, 0, 0))  # pure cyan
    cmyk.save(root / 'dog' / 'cmyk.jpg')
    gray16 = np.full((48, 64), 65535, np.uint16)
    gray16[:, 32:] = 32768
    Image.fromarray(gray16).save(root / 'dog' / 'gray16.png')
    pal = Image.fromarray(_photo(seed=4)).convert('P')
    pal.save(root / 'zebra' / 'palette.gif')
    (root / 'zebra' / 'empty.png').write_bytes(b'')
    (root / 'zebra' / 'text.jpg').write_bytes(b'this is not an image at all')
    good = io.BytesIO()
    Image.fromarray(_photo(seed=5)).save(good, 'JPEG', quality=90)
    (root / 'zebra' / 'truncated.jpg').write_bytes(good.getvalue()[:len(good.getvalue()) // 2])
    (root / 'zebra' / 'notes.txt').write_text('ignored: not an image extension')
    return root


EXPECTED = {  # relative path -> label, for the files that must be packed
    'cat/gray.jpg': 0, 'cat/nested/deeper/rgb.png': 0, 'cat/rgb.jpg': 0,
    'dog/cmyk.jpg': 1, 'dog/gray16.png': 1, 'dog/rgba.png': 1,
    'zebra/palette.gif': 2,
}
BROKEN = {'zebra/empty.png': 'empty', 'zebra/text.jpg': 'not a recognised image',
          'zebra/truncated.jpg': 'truncated'}


def test_pack_mixed_folder(mixed_folder: Path, tmp_path: Path):
    prefix = str(tmp_path / 'out' / 'mixed')
    result = pack_folder(str(mixed_folder), prefix, workers=2, progress=False)
    assert result.packed == len(EXPECTED)
    assert result.ignored == 1
    assert {p: r for p, r in result.skipped}.keys() == BROKEN.keys()
    for path, reason in result.skipped:
        assert BROKEN[path] in reason, (path, reason)
    report = Path(prefix + '.skipped.txt').read_text().splitlines()
    assert sorted(line.split('\t')[0] for line in report) == sorted(BROKEN)
    assert Path(prefix + '.classes').read_text().split() == ['cat', 'dog', 'zebra']

    entries = read_lst(prefix + '.lst')
    assert [e.path for e in entries] == sorted(EXPECTED)
    assert [e.key for e in entries] == list(range(len(EXPECTED)))
    records = RecordFile(prefix + '.rec')
    reader = mx.recordio.MXIndexedRecordIO(prefix + '.idx', prefix + '.rec', 'r')
    images = {}
    for pos, entry in enumerate(entries):
        data = records.read(pos)
        assert data == reader.read_idx(entry.key)
        label, _ = unpack_image_record(data)
        assert label == EXPECTED[entry.path] == entry.labels[0]
        images[entry.path] = np.asarray(_stored_image(data), np.int32)
    reader.close()
    stripe = np.abs(images['dog/rgba.png'][:, :6] - 255)  # transparent -> white
    assert stripe.mean() <= 2 and stripe.max() <= 10
    assert np.abs(images['dog/cmyk.jpg'] - [0, 255, 255]).max() <= 6  # cyan
    assert np.abs(images['dog/gray16.png'][:, :28] - 255).max() <= 3  # 16 bit scaled to 8
    assert np.abs(images['dog/gray16.png'][:, 36:] - 128).max() <= 3
    gray = images['cat/gray.jpg']
    assert np.abs(gray[..., 0] - gray[..., 2]).max() <= 2  # grey stored as 3 equal channels


def test_pack_is_deterministic_and_readable_by_image_record_iter(mixed_folder: Path,
                                                                 tmp_path: Path):
    a = pack_folder(str(mixed_folder), str(tmp_path / 'a'), workers=1, progress=False)
    b = pack_folder(str(mixed_folder), str(tmp_path / 'b'), workers=2, progress=False)
    assert a.packed == b.packed == len(EXPECTED)
    for suffix in ('.rec', '.idx', '.lst', '.classes'):
        assert (tmp_path / f'a{suffix}').read_bytes() == (tmp_path / f'b{suffix}').read_bytes()
    it = mx.io.ImageRecordIter(path_imgrec=str(tmp_path / 'a.rec'),
                               path_imgidx=str(tmp_path / 'a.idx'), data_shape=(3, 32, 32),
                               batch_size=len(EXPECTED), resize=32)
    batch = next(iter(it))
    labels = sorted(batch.label[0].asnumpy().astype(int).tolist())
    assert labels == sorted(EXPECTED.values())


def test_pack_resize_and_lst_input(tmp_path: Path):
    root = tmp_path / 'imgs'
    root.mkdir()
    for i in range(3):
        Image.fromarray(_photo(60, 90, seed=i)).save(root / f'{i}.png')
    lst = tmp_path / 'in.lst'
    lst.write_text('7\t2.000000\t0.png\n3\t0.000000\t1.png\n5\t1.000000\t2.png\n')
    result = pack_entries(read_lst(str(lst)), str(root), str(tmp_path / 'p'), resize=30,
                          progress=False)
    assert result.packed == 3
    assert [e.key for e in read_lst(str(tmp_path / 'p.lst'))] == [7, 3, 5]  # keys kept
    records = RecordFile(str(tmp_path / 'p.rec'))
    assert records.keys.tolist() == [7, 3, 5]
    img = _stored_image(records.read(0))
    assert min(img.size) == 30 and img.size == (45, 30)
    assert (tmp_path / 'p.classes').read_text().split() == ['0', '1', '2']


def test_multi_part_record_round_trip(tmp_path: Path):
    """The writer splits records at an aligned magic number; the reader must join them."""
    magic = (0xCED7230A).to_bytes(4, 'little')
    payload = b'\xff\xd8abcd' + b'\x00\x00' + magic + b'wxyz' + magic + magic + b'\xff\xd9'
    rec, idx = str(tmp_path / 'm.rec'), str(tmp_path / 'm.idx')
    writer = mx.recordio.MXIndexedRecordIO(idx, rec, 'w')
    for key in range(3):
        writer.write_idx(key, pack_image_record(key, key, payload * (key + 1)))
    writer.close()
    records = RecordFile(rec)
    for pos in range(3):
        label, body = unpack_image_record(records.read(pos))
        assert label == pos and body == payload * (pos + 1)


def test_scan_folder_errors(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match='not a directory'):
        scan_folder(str(tmp_path / 'missing'))
    (tmp_path / 'flat.jpg').write_bytes(b'')
    with pytest.raises(ValueError, match='no class sub-folders'):
        scan_folder(str(tmp_path))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, 'tools/pack_rec.py', *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_cli_exit_codes(mixed_folder: Path, tmp_path: Path):
    ok = _cli('--root', str(mixed_folder), '--prefix', str(tmp_path / 'cli'), '--workers', '2')
    assert ok.returncode == 0, ok.stderr
    assert f'packed {len(EXPECTED)} images' in ok.stderr and 'skipped 3' in ok.stderr
    broken = tmp_path / 'broken'
    (broken / 'a').mkdir(parents=True)
    (broken / 'a' / 'x.jpg').write_bytes(b'nope')
    bad = _cli('--root', str(broken), '--prefix', str(tmp_path / 'none'), '--no-progress')
    assert bad.returncode == 1 and 'nothing could be packed' in bad.stderr
    missing = _cli('--root', str(tmp_path / 'missing'), '--prefix', str(tmp_path / 'm'))
    assert missing.returncode == 2 and 'not a directory' in missing.stderr
    assert not os.path.exists(tmp_path / 'm.rec')


def test_truncated_file_refused_even_when_pil_is_lenient(tmp_path, monkeypatch):
    """gluoncv sets PIL's LOAD_TRUNCATED_IMAGES on import; the packer must not depend on it."""
    from PIL import ImageFile

    from gluon_resnest.data.pack import encode_image

    buf = io.BytesIO()
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (64, 64, 3), np.uint8)).save(
        buf, 'JPEG')
    path = tmp_path / 'truncated.jpg'
    path.write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])
    monkeypatch.setattr(ImageFile, 'LOAD_TRUNCATED_IMAGES', True)
    with pytest.raises(ValueError, match='cannot decode'):
        encode_image(str(path))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True
