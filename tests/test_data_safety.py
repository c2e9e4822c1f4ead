"""Packing never packs a file twice, loops, hides an unreadable folder or leaves temporaries;
keys and labels are range-checked; prediction decodes exactly what training sees."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gluon_resnest.data import RecordFile
from gluon_resnest.data.pack import ListEntry, pack_entries, pack_folder, read_image, read_lst
from gluon_resnest.data.records import unpack_image_record
from gluon_resnest.data.transforms import decode_image
from gluon_resnest.errors import InputError

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534


def _png(path: Path, value: int, size=(12, 10), mode='RGB') -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], len(mode)), value, np.uint8)
    Image.fromarray(arr if len(mode) > 1 else arr[..., 0], mode).save(path)


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line]


def test_symlink_loop_and_duplicates_are_packed_once(tmp_path: Path):
    root = tmp_path / 'images'
    _png(root / 'cat' / 'a.png', 10)
    _png(root / 'cat' / 'b.png', 20)
    _png(root / 'dog' / 'c.png', 30)
    (root / 'cat' / 'loop').symlink_to(root / 'cat')            # a loop
    (root / 'cat' / 'dogs').symlink_to(root / 'dog')            # another class's folder
    (root / 'dog' / 'again.png').symlink_to(root / 'dog' / 'c.png')  # one file, two names
    (root / 'dog' / 'dangling.png').symlink_to(root / 'nowhere.png')
    result = pack_folder(str(root), str(tmp_path / 'p'), progress=False)
    packed = read_lst(str(tmp_path / 'p.lst'))
    # Every real file exactly once, under its own class and path.
    assert sorted((e.path, e.labels[0]) for e in packed) == [
        ('cat/a.png', 0.0), ('cat/b.png', 0.0), ('dog/c.png', 1.0)]
    reasons = dict(result.skipped)
    assert reasons['cat/loop'].startswith('symbolic link loop')
    assert reasons['cat/dogs/c.png'] == 'same file as dog/c.png'
    assert reasons['dog/again.png'] == 'same file as dog/c.png'
    assert reasons['dog/dangling.png'].startswith('cannot resolve')
    assert sorted(reasons) == ['cat/dogs/again.png', 'cat/dogs/c.png', 'cat/dogs/dangling.png',
                               'cat/loop', 'dog/again.png', 'dog/dangling.png']
    assert 'skipped 6' in result.summary()
    assert len(_lines(tmp_path / 'p.skipped.txt')) == len(result.skipped) == 6
    assert len(RecordFile(str(tmp_path / 'p.rec'))) == 3


@contextlib.contextmanager
def _unprivileged():
    """Act as an ordinary user (root reads every file whatever its mode)."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_unreadable_folder_and_file_are_reported_and_counted():
    base = Path(tempfile.mkdtemp(prefix='pack_perm_'))  # outside root-only pytest folders
    try:
        os.chmod(base, 0o777)
        root = base / 'images'
        for cls in ('a', 'b', 'c'):
            _png(root / cls / f'{cls}.png', 50)
        _png(root / 'c' / 'secret.png', 60)
        for folder, _, names in os.walk(base):
            os.chmod(folder, 0o777)
            for name in names:
                os.chmod(os.path.join(folder, name), 0o644)
        os.chmod(root / 'b', 0o000)
        os.chmod(root / 'c' / 'secret.png', 0o000)
        with _unprivileged():
            result = pack_folder(str(root), str(base / 'out'), progress=False)
        reasons = dict(result.skipped)
        assert reasons['b'].startswith('cannot read folder') and 'ermission' in reasons['b']
        assert 'ermission' in reasons['c/secret.png']
        assert result.packed == 2 and len(result.skipped) == 2
        assert 'skipped 2' in result.summary()
        assert (base / 'out.classes').read_text().split() == ['a', 'b', 'c']
    finally:
        for folder, _, _ in os.walk(base):
            os.chmod(folder, 0o777)
        subprocess.run(['rm', '-rf', str(base)], check=True)


@pytest.mark.parametrize('line, message', [
    ('-1\t0\tx.png', 'key -1 is outside'),
    (f'{2**63}\t0\tx.png', 'is outside 0..'),
    ('0\tnan\tx.png', 'not a finite number'),
    ('0\t-2\tx.png', 'label -2 is not a class index'),
    ('0\t1.5\tx.png', 'label 1.5 is not a class index'),
    ('0\t7\tx.png', 'label 7 is outside 0..4'),
])
def test_lst_key_and_label_ranges(tmp_path: Path, line: str, message: str):
    _png(tmp_path / 'x.png', 1)
    lst = tmp_path / 'in.lst'
    lst.write_text(line + '\n')
    with pytest.raises(InputError, match=message) as info:
        pack_entries(read_lst(str(lst)), str(tmp_path), str(tmp_path / 'out'), progress=False,
                     num_classes=5, source=str(lst))
    assert str(lst) in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['in.lst', 'x.png']  # nothing written


def test_duplicate_keys_refused(tmp_path: Path):
    entries = [ListEntry(3, (0.0,), 'a.png'), ListEntry(3, (1.0,), 'b.png')]
    with pytest.raises(InputError, match='key 3 is used twice'):
        pack_entries(entries, str(tmp_path), str(tmp_path / 'out'), progress=False)


def test_no_temporaries_after_error_or_kill(tmp_path: Path):
    _png(tmp_path / 'img' / 'a' / 'x.png', 5)
    # A run killed while writing leaves PREFIX.rec.tmpPID: the next run removes it.
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    for suffix in ('rec', 'idx'):
        (tmp_path / f'out.{suffix}.tmp{dead.pid}').write_bytes(b'partial')
    (tmp_path / f'out.rec.tmp{os.getpid()}x').write_bytes(b'not ours')
    pack_folder(str(tmp_path / 'img'), str(tmp_path / 'out'), progress=False)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ['img', 'out.classes', 'out.idx', 'out.lst', 'out.rec',
                     f'out.rec.tmp{os.getpid()}x', 'out.skipped.txt']
    # An error while writing (here: a worker's image list that cannot be encoded at all is
    # fine; a failure of the writer is not) removes this run's temporaries.
    (tmp_path / 'blocked.rec').mkdir()
    with pytest.raises(InputError, match='output is a directory'):
        pack_folder(str(tmp_path / 'img'), str(tmp_path / 'blocked'), progress=False)
    assert not list(tmp_path.glob('blocked.*.tmp*'))


def test_pack_rec_killed_by_sigterm_leaves_nothing(tmp_path: Path):
    image = tmp_path / 'img.png'
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (256, 256, 3), np.uint8)).save(image)
    lst = tmp_path / 'many.lst'
    lst.write_text(''.join(f'{i}\t0\timg.png\n' for i in range(20000)))
    proc = subprocess.Popen([sys.executable, 'tools/pack_rec.py', '--lst', str(lst), '--prefix',
                             str(tmp_path / 'out'), '--workers', '1', '--no-progress'],
                            cwd=REPO, stderr=subprocess.PIPE, text=True)
    # Stop it, as a scheduler would, once it is writing its temporary .rec.
    tmp_rec = tmp_path / f'out.rec.tmp{proc.pid}'
    while not tmp_rec.exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.terminate()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, err
    assert not list(tmp_path.glob('out*')), list(tmp_path.glob('out*'))


def _packed_pixels(path: Path, tmp_path: Path) -> np.ndarray:
    """The pixels the training loader decodes for ``path`` after packing it."""
    root = tmp_path / 'one'
    (root / 'a').mkdir(parents=True)
    os.link(path, root / 'a' / path.name)
    pack_folder(str(root), str(tmp_path / 'one_p'), progress=False)
    _, encoded = unpack_image_record(RecordFile(str(tmp_path / 'one_p.rec')).read(0))
    return decode_image(encoded)


@pytest.mark.parametrize('kind', ['rgba_png', 'gif', 'float_tiff', 'palette_alpha', 'jpeg'])
def test_prediction_decodes_like_packing_and_training(tmp_path: Path, kind: str):
    rng = np.random.RandomState(1)
    rgb = rng.randint(0, 255, (20, 24, 3), np.uint8)
    path = tmp_path / {'rgba_png': 'x.png', 'gif': 'x.gif', 'float_tiff': 'x.tif',
                       'palette_alpha': 'p.png', 'jpeg': 'x.jpg'}[kind]
    if kind == 'rgba_png':
        alpha = np.zeros((20, 24), np.uint8)  # fully transparent left half: white after
        alpha[:, 12:] = 255
        Image.fromarray(np.dstack([rgb, alpha]), 'RGBA').save(path)
    elif kind == 'gif':
        Image.fromarray(rgb).convert('P').save(path)
    elif kind == 'float_tiff':
        Image.fromarray(rng.rand(20, 24).astype(np.float32), 'F').save(path)
    elif kind == 'palette_alpha':
        img = Image.fromarray(rgb).convert('P')
        img.info['transparency'] = 0
        img.save(path, transparency=0)
    else:
        Image.fromarray(rgb).save(path, quality=90)
    predicted = read_image(str(path))
    assert predicted.dtype == np.uint8 and predicted.shape == (20, 24, 3)
    np.testing.assert_array_equal(predicted, _packed_pixels(path, tmp_path))
    if kind == 'rgba_png':
        assert predicted[:, :6].min() >= 240  # composited on white, not the hidden colours


def test_loaders_check_labels_against_the_class_count(tmp_path: Path):
    from gluon_resnest.data import TrainLoader, ValLoader

    root = tmp_path / 'img'
    for label in range(6):
        _png(root / f'c{label}' / 'x.png', 40 * label)
    pack_folder(str(root), str(tmp_path / 'six'), progress=False)
    rec = str(tmp_path / 'six.rec')
    ValLoader(rec, 2, eval_crop=32, num_workers=0, num_classes=6)  # fits
    for make in (lambda: TrainLoader(rec, 2, 32, num_workers=0, num_classes=5),
                 lambda: ValLoader(rec, 2, eval_crop=32, num_workers=0, num_classes=5)):
        with pytest.raises(InputError) as info:
            make()
        message = str(info.value)
        assert 'record 5 has label 5' in message and '5-class model' in message
        assert message.endswith(f'({rec})')


def test_wholly_unreadable_rec_is_refused_up_front(tmp_path: Path):
    from gluon_resnest.data import ValLoader

    rec = tmp_path / 'noise.rec'
    rec.write_bytes(np.random.RandomState(0).bytes(4096))
    (tmp_path / 'noise.idx').write_text(''.join(f'{i}\t{i * 256}\n' for i in range(8)))
    with pytest.raises(InputError, match='record 0 at byte 0 has no record header'):
        ValLoader(str(rec), 2, eval_crop=32, num_workers=0, num_classes=10)


def test_shared_memory_left_by_a_killed_loader_is_removed(tmp_path: Path):
    from gluon_resnest.data import ValLoader

    if not os.access('/dev/shm', os.W_OK):
        pytest.skip('no writable /dev/shm')
    _png(tmp_path / 'img' / 'a' / 'x.png', 9)
    pack_folder(str(tmp_path / 'img'), str(tmp_path / 'p'), progress=False)
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    stale = Path(f'/dev/shm/gluon_resnest_{dead.pid}_deadbeef_0_x')
    stale.write_bytes(b'\0' * 64)
    with ValLoader(str(tmp_path / 'p.rec'), 1, eval_crop=32, num_workers=1) as loader:
        assert [d.shape for d, _ in loader] == [(1, 3, 32, 32)]
        assert loader._pool.transport == 'shared memory'  # noqa: SLF001
    assert not stale.exists()
    mine = [n for n in os.listdir('/dev/shm') if n.startswith(f'gluon_resnest_{os.getpid()}_')]
    assert mine == []
