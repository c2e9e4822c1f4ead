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
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..atomic import FileSet, make_folder, write_failure
from ..errors import MAX_CLASSES, InputError, missing
from .records import (
    MAX_IMAGE_PIXELS,
    RecordFile,
    check_encoded_image,
    check_pixel_count,
    pack_image_record,
)

__all__ = ['IMAGE_EXTENSIONS', 'MAX_IMAGE_PIXELS', 'MAX_KEY', 'ListEntry', 'PackResult',
           'ScanResult', 'check_entries', 'check_pixel_count', 'encode_image',
           'encode_image_bytes', 'escape_line', 'image_pixels', 'pack_entries', 'pack_folder',
           'read_image', 'read_lst', 'scan_folder', 'to_rgb', 'write_lst']

logger = logging.getLogger(__name__)

#: Largest record key: ``mx.recordio`` stores it as a signed 64-bit number in the ``.idx``.
MAX_KEY = 2**63 - 1

#: Characters that would split a line of a ``.lst``, ``.classes`` or ``.skipped.txt`` file
#: (control characters, tab, and what Python's ``str.splitlines`` takes for line ends).
_LINE_BREAKING = re.compile('[\x00-\x1f\x7f\x85\u2028\u2029]')

#: The files :func:`pack_entries` writes for a prefix.
PACK_SUFFIXES = ('.rec', '.idx', '.lst', '.classes', '.skipped.txt')

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


def _walk_images(folder: Path, root: Path, ancestors: frozenset,
                 result: ScanResult) -> List[Tuple[str, str]]:
    """``(path relative to root, real path)`` of the image files below ``folder``.

    Symbolic links are followed, except into a folder that is its own ancestor (a loop); a
    folder or file that cannot be read is reported in ``result.skipped``.
    """
    try:
        stat = folder.stat()
        children = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as err:
        result.skipped.append((_rel(folder, root), f'cannot read folder: {err.strerror}'))
        return []
    ident = (stat.st_dev, stat.st_ino)
    if ident in ancestors:
        result.skipped.append((_rel(folder, root), 'symbolic link loop: not followed'))
        return []
    ancestors = ancestors | {ident}
    files: List[Tuple[str, str]] = []
    for child in children:
        if child.name.startswith('.'):
            continue
        path = Path(child.path)
        try:
            is_dir = child.is_dir()  # follows symbolic links
        except OSError as err:
            result.skipped.append((_rel(path, root), f'cannot stat: {err.strerror}'))
            continue
        if is_dir and _LINE_BREAKING.search(child.name):
            result.skipped.append((_rel(path, root), 'folder name holds a control character '
                                   '(a newline, tab, ...): not read'))
        elif is_dir:
            files.extend(_walk_images(path, root, ancestors, result))
        elif os.path.splitext(child.name)[1].lower() not in IMAGE_EXTENSIONS:
            result.ignored += 1
        elif _LINE_BREAKING.search(child.name):
            result.skipped.append((_rel(path, root), 'file name holds a control character '
                                   '(a newline, tab, ...)'))
        else:
            try:
                real = os.path.realpath(path, strict=True)
            except OSError as err:  # a dangling link, or a loop of file links
                result.skipped.append((_rel(path, root),
                                       f'cannot resolve: {err.strerror or err}'))
                continue
            if _is_regular(child):
                files.append((_rel(path, root), real))
            else:  # reading a FIFO would wait forever
                result.skipped.append((_rel(path, root), 'not a regular file (a FIFO, device '
                                       'or socket)'))
    return files


def _is_regular(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()  # follows symbolic links; False for FIFOs, devices, sockets
    except OSError:
        return True  # reported when it is read


def escape_line(text: str) -> str:
    """``text`` with every line-breaking character written as a Python escape (``\\n``)."""
    return _LINE_BREAKING.sub(lambda m: repr(m.group())[1:-1], text)


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


@dataclass
class ScanResult:
    """What :func:`scan_folder` found."""

    classes: List[str]
    entries: List[ListEntry]
    ignored: int = 0  # files without an image extension
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def __iter__(self):  # (classes, entries, ignored), as older callers unpack it
        return iter((self.classes, self.entries, self.ignored))


def scan_folder(root: str) -> ScanResult:
    """Classes (sorted sub-folder names) and images of an ImageNet-style folder.

    Every file with an image extension at any depth below a class folder is an image of that
    class; the order (label, then relative path) is deterministic. Hidden entries are ignored.
    Symbolic links are followed, but every folder is walked once (no loops) and every file is
    listed once, under the first class and path that reach it; the others, and folders that
    cannot be read, are reported in ``skipped``.

    Returns:
        A :class:`ScanResult` (it unpacks as ``classes, entries, ignored``).

    Raises:
        FileNotFoundError: ``root`` is not a directory.
        InputError: it cannot be listed, or it holds no class folders.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise missing('image root is not a directory', root)
    try:
        classes = sorted(p.name for p in root_path.iterdir()
                         if p.is_dir() and not p.name.startswith('.'))
    except OSError as err:
        raise InputError(f'cannot list the image root: {err.strerror}', root) from None
    if not classes:
        raise InputError('no class sub-folders (expected ROOT/<class>/<image>)', root)
    for name in classes:
        if _LINE_BREAKING.search(name):
            raise InputError(f'class folder {escape_line(name)!r} holds a control character (a '
                             f'newline, tab, ...), which would break PREFIX.classes: rename it',
                             root)
    result = ScanResult(classes, [])
    found = [(label, rel, real) for label, name in enumerate(classes)
             for rel, real in sorted(_walk_images(root_path / name, root_path, frozenset(),
                                                  result))]
    # A file reached by several paths is packed once: under its own path when one of them
    # has no symbolic link in it, else under the first in (label, path) order.
    real_root = os.path.realpath(root_path)
    owner: dict = {}
    for label, rel, real in found:
        direct = real == os.path.join(real_root, *rel.split('/'))
        if real not in owner or (direct and not owner[real][2]):
            owner[real] = (label, rel, direct)
    for label, rel, real in found:
        if owner[real][:2] != (label, rel):
            result.skipped.append((rel, f'same file as {owner[real][1]}'))
        else:
            result.entries.append(ListEntry(len(result.entries), (float(label),), rel))
    return result


def read_lst(lst_path: str) -> List[ListEntry]:
    """Entries of an im2rec list file (``key<TAB>label[<TAB>label...]<TAB>path``).

    Raises:
        FileNotFoundError: no such file.
        InputError: a malformed line (its number is in the message).
    """
    if not os.path.isfile(lst_path):
        raise missing('no such list file', lst_path)
    entries = []
    try:
        with open(lst_path, encoding='utf-8', newline='') as f:
            lines = [line[:-1] if line.endswith('\r') else line
                     for line in f.read().split('\n')]
    except UnicodeDecodeError:
        raise InputError('not a text list file (expected key<TAB>label<TAB>path lines)',
                         lst_path) from None
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split('\t')
        try:
            if len(parts) < 3:
                raise ValueError('fewer than 3 tab-separated fields')
            entries.append(ListEntry(int(parts[0]), tuple(float(v) for v in parts[1:-1]),
                                     parts[-1]))
        except ValueError as err:
            raise InputError(f'line {line_no}: expected "key<TAB>label<TAB>path": {err}',
                             lst_path) from None
    return entries


def check_entries(entries: Sequence[ListEntry], num_classes: int | None = None,
                  source: str | None = None) -> None:
    """Refuse keys and labels that would make a broken or ambiguous RecordIO file.

    Keys must be unique integers in ``[0, MAX_KEY]``; the first label of every entry (the
    class) a whole number in ``[0, num_classes)`` (``num_classes`` None: below
    :data:`~gluon_resnest.errors.MAX_CLASSES`, so that float32, the label type of RecordIO,
    holds it exactly); further labels must be finite float32 numbers. Paths must not hold
    control characters (each record is one line of the ``.lst``).

    Raises:
        InputError: the first offending entry, with its position, naming ``source``.
    """
    seen: dict = {}
    for pos, e in enumerate(entries, 1):
        where = f'entry {pos} ({escape_line(e.path)})'
        if _LINE_BREAKING.search(e.path):
            raise InputError(f'{where}: the path holds a control character (a newline, tab, '
                             f'...), which would break the .lst', source)
        if not 0 <= e.key <= MAX_KEY:
            raise InputError(f'{where}: key {e.key} is outside 0..{MAX_KEY}', source)
        if e.key in seen:
            raise InputError(f'{where}: key {e.key} is used twice (first by entry '
                             f'{seen[e.key]})', source)
        seen[e.key] = pos
        if not e.labels:
            raise InputError(f'{where}: no label', source)
        if not all(np.isfinite(e.labels)):
            raise InputError(f'{where}: label {e.labels} is not a finite number', source)
        if any(abs(v) > _FLOAT32_MAX for v in e.labels):
            raise InputError(f'{where}: label {e.labels} does not fit in a float32, the label '
                             f'type of RecordIO', source)
        label = e.labels[0]
        if label < 0 or label != int(label):
            raise InputError(f'{where}: label {label:g} is not a class index 0, 1, 2, ...',
                             source)
        if num_classes is None and label >= MAX_CLASSES:
            raise InputError(f'{where}: label {int(label)} is not a class index of at most '
                             f'{MAX_CLASSES} classes (give --num-classes for a check against '
                             f'your class count)', source)
        if num_classes is not None and label >= num_classes:
            raise InputError(f'{where}: label {label:g} is outside 0..{num_classes - 1} '
                             f'({num_classes} classes)', source)


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _lst_text(entries: Sequence[ListEntry]) -> str:
    lines = []
    for e in entries:
        labels = ''.join(f'{v:f}\t' for v in e.labels)
        lines.append(f'{e.key}\t{labels}{e.path}\n')
    return ''.join(lines)


def write_lst(path: str, entries: Sequence[ListEntry]) -> None:
    """Write entries in im2rec's list format."""
    with open(path, 'w', encoding='utf-8') as f:
        f.write(_lst_text(entries))


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
    raw = _read_regular_file(path)
    if not raw:
        raise ValueError('empty file')
    return encode_image_bytes(raw, resize, quality)


def _read_regular_file(path: str) -> bytes:
    """The contents of a regular file; a FIFO, device or socket is refused, not waited on."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not S_ISREG(os.fstat(fd).st_mode):
            raise ValueError('not a regular file (a folder, FIFO, device or socket)')
        os.set_blocking(fd, True)
        with os.fdopen(os.dup(fd), 'rb') as handle:
            return handle.read()
    finally:
        os.close(fd)


def encode_image_bytes(raw: bytes, resize: int = 0, quality: int = 95) -> Tuple[bytes, bool]:
    """:func:`encode_image` of the contents of an image file.

    Raises:
        ValueError: empty, truncated or undecodable data (the message says which).
    """
    if not raw:
        raise ValueError('empty data')
    # Importing gluoncv sets PIL's process-wide LOAD_TRUNCATED_IMAGES, which would let a
    # truncated file through as a half-grey image: refuse truncation whatever that flag says.
    lenient = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw))
            check_pixel_count(img.width, img.height)
            img.load()  # raises on a truncated file
    except UnidentifiedImageError:
        raise ValueError('not a recognised image format') from None
    except Image.DecompressionBombError:
        raise ValueError(f'the image claims more than {MAX_IMAGE_PIXELS} pixels, the most '
                         f'that is decoded') from None
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to decode untrusted bytes
        raise ValueError(f'cannot decode: {escape_line(str(err)) or type(err).__name__}'
                         ) from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient
    if img.width == 0 or img.height == 0:
        raise ValueError(f'image has size {img.width}x{img.height}')
    orientation = img.getexif().get(0x0112, 1) if hasattr(img, 'getexif') else 1
    if (img.format == 'JPEG' and img.mode == 'RGB' and resize <= 0 and orientation in (1, None)
            and check_encoded_image(raw) is None):
        return raw, True
    try:
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
    except Exception as err:  # noqa: BLE001 - decoded, but with values no image has
        raise ValueError(f'cannot convert to an RGB JPEG: '
                         f'{escape_line(str(err)) or type(err).__name__}') from None
    return out.getvalue(), False


def read_image(path: str, quality: int = 95) -> np.ndarray:
    """The pixels a network is trained on for the image file ``path``: HWC uint8 RGB.

    The file goes through what packing and the loaders do to it (:func:`encode_image` at the
    packer's default quality, then :func:`~gluon_resnest.data.transforms.decode_image`), so an
    image predicted from a file is exactly the image the network would see in a packed data
    set: transparency composited on white, EXIF orientation applied, every mode and format the
    packer accepts.

    Raises:
        FileNotFoundError: no such file.
        InputError: an unreadable or undecodable file (the reason names it).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f'no image file at {path!r}')
    try:
        raw = _read_regular_file(path)
    except OSError as err:
        raise InputError(f'cannot read {path!r} as an image: {err.strerror}') from None
    except ValueError as err:
        raise InputError(f'cannot read {path!r} as an image: {err}') from None
    if not raw:
        raise InputError(f'cannot read {path!r} as an image: empty file')
    try:
        return image_pixels(raw, quality)
    except ValueError as err:
        raise InputError(f'cannot read {path!r} as an image: {err}') from None


def image_pixels(raw: bytes, quality: int = 95) -> np.ndarray:
    """:func:`read_image` of the contents of an image file (an upload, a request body).

    Raises:
        ValueError: empty, truncated or undecodable data (the reason says which).
    """
    from .transforms import decode_image

    data, _ = encode_image_bytes(raw, 0, quality)
    return decode_image(data)


def _encode_job(args: Tuple[str, int, int]) -> Tuple[bytes | None, bool, str | None]:
    path, resize, quality = args
    try:
        data, unchanged = encode_image(path, resize, quality)
        return data, unchanged, None
    except Exception as err:  # noqa: BLE001 - any failure skips (and reports) this one file
        return None, False, str(err) or type(err).__name__


def pack_entries(entries: Sequence[ListEntry], root: str, prefix: str, resize: int = 0,
                 quality: int = 95, workers: int = 1, classes: Sequence[str] | None = None,
                 progress: bool = True, renumber: bool = False,
                 num_classes: int | None = None, source: str | None = None,
                 skipped: Sequence[Tuple[str, str]] = ()) -> PackResult:
    """Encode ``entries`` (paths relative to ``root``) and write the ``prefix.*`` files.

    The files are written as one set (:class:`~gluon_resnest.atomic.FileSet`): under temporary
    names, checked, and renamed into place when all are complete. An error, a full disk or an
    interruption leaves the previous files (if any) and no temporaries (temporaries left by a
    killed run are removed by the next one).

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
        num_classes: labels must lie in ``[0, num_classes)`` (default: ``len(classes)`` when
            given, else any class index).
        source: file the entries came from, named in errors.
        skipped: ``(path, reason)`` of files skipped before (listed in ``prefix.skipped.txt``).

    Returns:
        A :class:`PackResult`; the files are written even if nothing could be packed.

    Raises:
        InputError: a bad key or label (see :func:`check_entries`), or an unwritable output.
    """
    import mxnet as mx
    from tqdm import tqdm

    if not 1 <= quality <= 100:
        raise InputError(f'quality must be in [1, 100], got {quality}')
    if num_classes is None and classes is not None:
        num_classes = len(classes)
    check_entries([ListEntry(i, e.labels, e.path) for i, e in enumerate(entries)] if renumber
                  else entries, num_classes, source)
    prefix = str(prefix)
    out_dir = os.path.dirname(os.path.abspath(prefix))
    make_folder(out_dir)
    if os.path.isdir(prefix + '.rec'):
        raise InputError('output is a directory', prefix + '.rec')
    result = PackResult(rec_path=prefix + '.rec')
    result.skipped.extend(skipped)
    final = {suffix: prefix + suffix for suffix in PACK_SUFFIXES}
    jobs = [(os.path.join(root, e.path), int(resize), int(quality)) for e in entries]
    packed: List[ListEntry] = []
    pool = None
    writer = None
    # Every output is written under a temporary name and renamed when all are complete: an
    # error, a full disk or a signal leaves the previous files (if any) and no temporaries.
    with FileSet(stale=final.values()) as files:
        tmp_rec, tmp_idx = files.temp(final['.rec']), files.temp(final['.idx'])
        try:
            writer = mx.recordio.MXIndexedRecordIO(tmp_idx, tmp_rec, 'w')
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
                    logger.warning('skipping %s: %s', escape_line(entry.path), reason)
                    continue
                key = len(packed) if renumber else entry.key
                try:
                    writer.write_idx(key, pack_image_record(entry.labels, key, data))
                except mx.base.MXNetError as err:
                    raise write_failure(err, final['.rec']) from None
                packed.append(ListEntry(key, entry.labels, entry.path))
                result.passed_through += unchanged
            bar.close()
            try:
                writer.close()
            except OSError as err:  # the .idx is written by Python, the .rec by MXNet
                raise write_failure(err, final['.idx']) from None
            except mx.base.MXNetError as err:
                raise write_failure(err, final['.rec']) from None
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
            if writer is not None:
                try:
                    writer.close()
                except (OSError, mx.base.MXNetError):
                    logger.debug('closing the record writer after an error', exc_info=True)
        if packed:
            # A write the file system cut short shows in the first or last record.
            RecordFile(tmp_rec, tmp_idx, names=(final['.rec'], final['.idx']))
        result.packed = len(packed)
        if classes is None:
            values = sorted({e.labels[0] for e in entries if e.labels})
            if values and all(v >= 0 and v == int(v) for v in values):
                values = range(int(values[-1]) + 1)  # line i names label i
            classes = [f'{v:g}' for v in values]
        files.write_text(final['.lst'], _lst_text(packed))
        files.write_text(final['.classes'], ''.join(f'{name}\n' for name in classes))
        files.write_text(final['.skipped.txt'], ''.join(
            f'{escape_line(path)}\t{escape_line(reason)}\n' for path, reason in result.skipped))
        files.commit()
    return result


def pack_folder(root: str, prefix: str, resize: int = 0, quality: int = 95, workers: int = 1,
                progress: bool = True) -> PackResult:
    """Pack an ImageNet-style folder (see :func:`scan_folder`); records get keys 0..n-1.

    Folders and files the scan could not use are reported (and counted) with the images that
    could not be encoded.
    """
    scan = scan_folder(root)
    for path, reason in scan.skipped:
        logger.warning('skipping %s: %s', escape_line(path), reason)
    result = pack_entries(scan.entries, root, prefix, resize, quality, workers, scan.classes,
                          progress, renumber=True, source=root, skipped=scan.skipped)
    result.ignored = scan.ignored
    return result
