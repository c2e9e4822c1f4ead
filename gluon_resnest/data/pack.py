"""Pack an image folder (or an im2rec ``.lst``) into an indexed RecordIO file of RGB JPEGs.

Outputs, for ``prefix``: ``prefix.rec`` + ``prefix.idx`` (readable by
``mx.recordio.MXIndexedRecordIO``, ``mx.io.ImageRecordIter`` and
:class:`~gluon_resnest.data.records.RecordFile`), ``prefix.lst`` (im2rec format:
``key<TAB>label<TAB>relative path``, the records actually packed), ``prefix.classes`` (class
names in label order) and ``prefix.skipped.txt`` (``path<TAB>reason`` for every file that was
not packed).

Every stored image is a baseline 3-channel JPEG: grey, palette, alpha (composited on white), CMYK,
16-bit and float images are converted; EXIF orientation is applied. An RGB JPEG that needs no
change is stored byte for byte. Unreadable, empty or truncated files are skipped and reported.
Images are encoded in parallel, written in list order: the same input gives the same output.
"""
from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .records import check_encoded_image, pack_image_record

__all__ = ['IMAGE_EXTENSIONS', 'ListEntry', 'PackResult', 'encode_image', 'pack_entries',
           'pack_folder', 'read_lst', 'scan_folder', 'to_rgb', 'write_lst']

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({'.jpg', '.jpeg', '.jpe', '.jfif', '.png', '.bmp', '.gif', '.tif',
                              '.tiff', '.webp', '.ppm', '.pgm', '.pbm', '.pnm'})


@dataclass(frozen=True)
class ListEntry:
    """One line of an im2rec ``.lst`` file."""

    key: int
    labels: Tuple[float, ...]
    path: str  # relative to the image root


@dataclass
class PackResult:
    """What :func:`pack_entries` did."""

    rec_path: str
    packed: int = 0
    passed_through: int = 0
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (path, reason)
    ignored: int = 0  # files without an image extension (folder input only)

    def summary(self) -> str:
        """One line for the log."""
        text = (f'packed {self.packed} images into {self.rec_path} '
                f'({self.passed_through} JPEGs stored unchanged), skipped {len(self.skipped)}')
        if self.ignored:
            text += f', ignored {self.ignored} non-image files'
        return text


def scan_folder(root: str) -> Tuple[List[str], List[ListEntry], int]:
    """Classes (sorted sub-folder names) and images of an ImageNet-style folder.

    Every file with an image extension at any depth below a class folder is an image of that
    class; the order (label, then relative path) is deterministic. Hidden entries are ignored.

    Returns:
        (class names, entries keyed 0..n-1, number of non-image files ignored).

    Raises:
        FileNotFoundError: ``root`` is not a directory.
        ValueError: it holds no class folders.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise FileNotFoundError(f'image root is not a directory: {root}')
    classes = sorted(p.name for p in root_path.iterdir()
                     if p.is_dir() and not p.name.startswith('.'))
    if not classes:
        raise ValueError(f'{root} has no class sub-folders (expected ROOT/<class>/<image>)')
    entries: List[ListEntry] = []
    ignored = 0
    for label, name in enumerate(classes):
        files = []
        for dirpath, dirnames, filenames in os.walk(root_path / name, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
            for fname in filenames:
                if fname.startswith('.'):
                    continue
                if os.path.splitext(fname)[1].lower() in IMAGE_EXTENSIONS:
                    files.append(os.path.relpath(os.path.join(dirpath, fname), root_path))
                else:
                    ignored += 1
        for rel in sorted(Path(f).as_posix() for f in files):
            entries.append(ListEntry(len(entries), (float(label),), rel))
    return classes, entries, ignored


def read_lst(lst_path: str) -> List[ListEntry]:
    """Entries of an im2rec list file (``key<TAB>label[<TAB>label...]<TAB>path``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a malformed line (its number is in the message).
    """
    if not os.path.isfile(lst_path):
        raise FileNotFoundError(f'no such list file: {lst_path}')
    entries = []
    with open(lst_path) as f:
        for line_no, line in enumerate(f, 1):
            line = line.rstrip('\n')
            if not line.strip():
                continue
            parts = line.split('\t')
            try:
                if len(parts) < 3:
                    raise ValueError('fewer than 3 tab-separated fields')
                entries.append(ListEntry(int(parts[0]), tuple(float(v) for v in parts[1:-1]),
                                         parts[-1]))
            except ValueError as err:
                raise ValueError(f'{lst_path}:{line_no}: expected "key<TAB>label<TAB>path": '
                                 f'{err}') from None
    return entries


def write_lst(path: str, entries: Sequence[ListEntry]) -> None:
    """Write entries in im2rec's list format."""
    with open(path, 'w') as f:
        for e in entries:
            labels = ''.join(f'{v:f}\t' for v in e.labels)
            f.write(f'{e.key}\t{labels}{e.path}\n')


def to_rgb(img: Image.Image) -> Image.Image:
    """An 8-bit RGB version of a decoded image of any mode.

    Transparency is composited on white; 16-bit and 32-bit integer images are scaled from their
    bit depth to 8 bits; float images are read as 0-1 if their maximum is at most 1, else 0-255.
    """
    mode = img.mode
    if mode == 'RGB':
        return img
    if mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La') or (mode == 'P' and 'transparency' in img.info):
        rgba = img.convert('RGBA')
        background = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert('RGB')
    if mode.startswith('I;16') or mode in ('I', 'F'):
        arr = np.asarray(img, dtype=np.float64)
        if mode == 'F':
            arr = arr * 255.0 if arr.size and np.nanmax(arr) <= 1.0 else arr
        elif mode.startswith('I;16') or (arr.size and arr.max() > 255):
            arr = arr / 257.0 if arr.max() <= 65535 else arr / (arr.max() / 255.0)
        arr = np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, 'L').convert('RGB')
    return img.convert('RGB')  # L, 1, P, CMYK, YCbCr, LAB, HSV, I;16 variants handled above


def encode_image(path: str, resize: int = 0, quality: int = 95) -> Tuple[bytes, bool]:
    """Read an image file and return (RGB JPEG bytes, stored unchanged).

    Args:
        path: image file.
        resize: if > 0, resize so the shorter side has this length (bicubic).
        quality: JPEG quality for re-encoded images.

    Raises:
        OSError, ValueError: unreadable, empty, truncated or undecodable file (the message says
            which).
    """
    with open(path, 'rb') as f:
        raw = f.read()
    if not raw:
        raise ValueError('empty file')
    # Importing gluoncv sets PIL's process-wide LOAD_TRUNCATED_IMAGES, which would let a
    # truncated file through as a half-grey image: refuse truncation whatever that flag says.
    lenient = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        img = Image.open(io.BytesIO(raw))
        img.load()  # raises on a truncated file
    except UnidentifiedImageError:
        raise ValueError('not a recognised image format') from None
    except (OSError, SyntaxError) as err:
        raise ValueError(f'cannot decode: {err}') from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient
    if img.width == 0 or img.height == 0:
        raise ValueError(f'image has size {img.width}x{img.height}')
    orientation = img.getexif().get(0x0112, 1) if hasattr(img, 'getexif') else 1
    if (img.format == 'JPEG' and img.mode == 'RGB' and resize <= 0 and orientation in (1, None)
            and check_encoded_image(raw) is None):
        return raw, True
    if orientation not in (1, None):
        img = ImageOps.exif_transpose(img)
    rgb = to_rgb(img)
    if resize > 0:
        w, h = rgb.size
        scale = resize / min(w, h)
        size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
        if size != rgb.size:
            rgb = rgb.resize(size, Image.BICUBIC)
    out = io.BytesIO()
    rgb.save(out, format='JPEG', quality=int(quality))
    return out.getvalue(), False


def _encode_job(args: Tuple[str, int, int]) -> Tuple[bytes | None, bool, str | None]:
    path, resize, quality = args
    try:
        data, unchanged = encode_image(path, resize, quality)
        return data, unchanged, None
    except Exception as err:  # noqa: BLE001 - any failure skips (and reports) this one file
        return None, False, str(err) or type(err).__name__


def pack_entries(entries: Sequence[ListEntry], root: str, prefix: str, resize: int = 0,
                 quality: int = 95, workers: int = 1, classes: Sequence[str] | None = None,
                 progress: bool = True, renumber: bool = False) -> PackResult:
    """Encode ``entries`` (paths relative to ``root``) and write the ``prefix.*`` files.

    Args:
        entries: images to pack, in output order.
        root: directory the entry paths are relative to.
        prefix: output path prefix.
        resize: shorter side after resizing (0 keeps the size).
        quality: JPEG quality of re-encoded images.
        workers: encoding processes (1 encodes in this process).
        classes: class names in label order for ``prefix.classes`` (default: the label values).
        progress: show a tqdm progress bar.
        renumber: give the packed records keys 0..n-1 instead of the entries' keys.

    Returns:
        A :class:`PackResult`; the files are written even if nothing could be packed.
    """
    import mxnet as mx
    from tqdm import tqdm

    if not 1 <= quality <= 100:
        raise ValueError(f'quality must be in [1, 100], got {quality}')
    prefix = str(prefix)
    out_dir = os.path.dirname(os.path.abspath(prefix))
    os.makedirs(out_dir, exist_ok=True)
    result = PackResult(rec_path=prefix + '.rec')
    tmp_rec, tmp_idx = f'{prefix}.rec.tmp{os.getpid()}', f'{prefix}.idx.tmp{os.getpid()}'
    jobs = [(os.path.join(root, e.path), int(resize), int(quality)) for e in entries]
    packed: List[ListEntry] = []
    writer = mx.recordio.MXIndexedRecordIO(tmp_idx, tmp_rec, 'w')
    pool = None
    try:
        if workers > 1 and len(jobs) > 1:
            import multiprocessing as mp
            # The encoders use only PIL: fork starts them at once (spawn re-imports MXNet).
            method = 'fork' if 'fork' in mp.get_all_start_methods() else 'spawn'
            pool = mp.get_context(method).Pool(workers)
            chunk = max(1, min(64, len(jobs) // (8 * workers)))
            results = pool.imap(_encode_job, jobs, chunksize=chunk)
        else:
            results = map(_encode_job, jobs)
        bar = tqdm(results, total=len(jobs), unit='img', desc='pack', disable=not progress)
        for entry, (data, unchanged, reason) in zip(entries, bar):
            if data is None:
                result.skipped.append((entry.path, reason))
                logger.warning('skipping %s: %s', entry.path, reason)
                continue
            key = len(packed) if renumber else entry.key
            writer.write_idx(key, pack_image_record(entry.labels, key, data))
            packed.append(ListEntry(key, entry.labels, entry.path))
            result.passed_through += unchanged
        bar.close()
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        writer.close()
    os.replace(tmp_rec, prefix + '.rec')
    os.replace(tmp_idx, prefix + '.idx')
    result.packed = len(packed)
    write_lst(prefix + '.lst', packed)
    if classes is None:
        values = sorted({e.labels[0] for e in entries if e.labels})
        if values and all(v >= 0 and v == int(v) for v in values):
            values = range(int(values[-1]) + 1)  # line i names label i
        classes = [f'{v:g}' for v in values]
    with open(prefix + '.classes', 'w') as f:
        f.writelines(f'{name}\n' for name in classes)
    with open(prefix + '.skipped.txt', 'w') as f:
        f.writelines(f'{path}\t{reason}\n' for path, reason in result.skipped)
    return result


def pack_folder(root: str, prefix: str, resize: int = 0, quality: int = 95, workers: int = 1,
                progress: bool = True) -> PackResult:
    """Pack an ImageNet-style folder (see :func:`scan_folder`); records get keys 0..n-1."""
    classes, entries, ignored = scan_folder(root)
    result = pack_entries(entries, root, prefix, resize, quality, workers, classes, progress,
                          renumber=True)
    result.ignored = ignored
    return result
