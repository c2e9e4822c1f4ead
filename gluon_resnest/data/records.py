"""RecordIO files (MXNet's ``.rec`` + ``.idx``) read without MXNet, and written with it.

The reader is pure Python (``os.pread`` on the ``.rec``), so data worker processes do not need the
MXNet engine and a damaged record raises :class:`CorruptRecordError` naming the file, the record
key and the reason, instead of aborting the process in C++.

Format (dmlc-core RecordIO): every part is ``uint32 magic 0xced7230a``, ``uint32 lrec``
(``cflag = lrec >> 29``, ``length = lrec & (2**29 - 1)``), ``length`` bytes of data, zero padding to
a multiple of 4. The writer splits a record at every 4-byte-aligned occurrence of the magic number
in its data (``cflag`` 1 = first part, 2 = middle, 3 = last); the reader joins the parts with the
magic bytes in between. An image record's data is MXNet's ``IRHeader`` (``struct 'IfQQ'``: flag,
label, id, id2), ``flag`` extra float32 labels when ``flag > 0``, then the encoded image.
"""
from __future__ import annotations

import logging
import os
import struct
from typing import List, Tuple

import numpy as np

from ..errors import InputError

__all__ = ['MAX_IMAGE_PIXELS', 'CorruptRecordError', 'RecordFile', 'check_encoded_image',
           'check_labels', 'check_pixel_count', 'jpeg_size',
           'idx_path_for', 'unpack_image_record', 'pack_image_record']

logger = logging.getLogger(__name__)

_MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack('<I', _MAGIC)
_LEN_MASK = (1 << 29) - 1
#: Most pixels (width x height) an image may have: larger ones, and files whose header claims
#: more (a decompression bomb), are refused before they are decoded (PIL's own limit). The one
#: limit of packing, prediction, evaluation, training and the model server.
MAX_IMAGE_PIXELS = 89_478_485
_IR_FORMAT = '<IfQQ'
_IR_SIZE = struct.calcsize(_IR_FORMAT)


class CorruptRecordError(ValueError):
    """A record that cannot be read or decoded.

    Attributes:
        path: the ``.rec`` file.
        key: the record's key in the ``.idx`` file.
        reason: what is wrong with it.
    """

    def __init__(self, path: str, key: int, reason: str):
        super().__init__(f'{path}: record {key}: {reason}')
        self.path = path
        self.key = key
        self.reason = reason

    def __reduce__(self):
        return type(self), (self.path, self.key, self.reason)


def idx_path_for(rec_path: str) -> str:
    """The ``.idx`` file that goes with ``rec_path`` (same stem)."""
    return os.path.splitext(rec_path)[0] + '.idx'


def _read_index(idx_path: str) -> Tuple[np.ndarray, np.ndarray]:
    keys, offsets = [], []
    with open(idx_path) as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split('\t')
            try:
                if len(parts) != 2:
                    raise ValueError('not two fields')
                keys.append(int(parts[0]))
                offsets.append(int(parts[1]))
            except ValueError:
                raise ValueError(
                    f'{idx_path}:{line_no}: expected "key<TAB>offset", got {line!r}') from None
    return np.asarray(keys, dtype=np.int64), np.asarray(offsets, dtype=np.int64)


class RecordFile:
    """Random access to the records of an indexed RecordIO file.

    Records are addressed by position ``0 .. len-1`` in ``.idx`` order; :attr:`keys` maps a position
    to the key written in the ``.idx`` file. The object can be pickled to worker processes; each
    process opens its own file descriptor on first use.

    The index is checked against the file before use (:meth:`check_index`).

    Args:
        rec_path: the ``.rec`` file.
        idx_path: its index; default: ``rec_path`` with the suffix ``.idx``.
        names: ``(rec, idx)`` names to give in errors (default: the paths).

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: the index is malformed or empty.
        InputError: the index does not fit the file (another file's index, a truncated file).
    """

    def __init__(self, rec_path: str, idx_path: str | None = None,
                 names: Tuple[str, str] | None = None):
        self.rec_path = str(rec_path)
        self.idx_path = str(idx_path) if idx_path else idx_path_for(self.rec_path)
        for path in (self.rec_path, self.idx_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f'no such file: {path}')
        self.keys, self.offsets = _read_index(self.idx_path)
        if len(self.keys) == 0:
            raise ValueError(f'{self.idx_path} lists no records')
        self.file_size = os.path.getsize(self.rec_path)
        # A record ends where the next one (in file order) starts: one pread per record.
        order = np.argsort(self.offsets, kind='stable')
        ends = np.empty_like(self.offsets)
        ends[order[:-1]] = self.offsets[order[1:]]
        ends[order[-1]] = self.file_size
        self.ends = ends
        self._fd: int | None = None
        self._pid: int | None = None
        self.check_index(names or (self.rec_path, self.idx_path))

    def check_index(self, names: Tuple[str, str], samples: int = 16) -> None:
        """Check that the index fits the file: every offset inside it, and the headers of the
        first, the last and evenly spaced records between them (in file order) complete.

        Raises:
            InputError: naming both files, the record and what is wrong.
        """
        where = f'{names[0]}, {names[1]}'
        hint = 'the .idx belongs to another .rec, or the .rec is truncated'
        outside = (self.offsets < 0) | (self.offsets > self.file_size - 8)
        if outside.any():
            pos = int(np.flatnonzero(outside)[0])
            raise InputError(f'record {int(self.keys[pos])} starts at byte '
                             f'{int(self.offsets[pos])}, outside the {self.file_size}-byte .rec '
                             f'({int(outside.sum())} such records): {hint}', where)
        order = np.argsort(self.offsets, kind='stable')
        picks = np.unique(np.linspace(0, len(order) - 1, min(samples, len(order))).round())
        fd = self._descriptor()
        for pos in (int(order[int(i)]) for i in picks):
            start = int(self.offsets[pos])
            head = os.pread(fd, 8, start)
            magic, lrec = struct.unpack('<II', head) if len(head) == 8 else (0, 0)
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            if magic != _MAGIC or cflag not in (0, 1):
                raise InputError(f'record {int(self.keys[pos])} at byte {start} has no record '
                                 f'header: {hint}', where)
            if start + 8 + length > self.file_size:
                raise InputError(f'record {int(self.keys[pos])} at byte {start} runs past the '
                                 f'end of the {self.file_size}-byte .rec: {hint}', where)

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self):
        state = self.__dict__.copy()
        state['_fd'] = None
        state['_pid'] = None
        return state

    def close(self) -> None:
        """Close this process's file descriptor (reopened on the next read)."""
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.rec_path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def read(self, pos: int) -> bytes:
        """The data of the record at position ``pos`` (multi-part records joined).

        Raises:
            CorruptRecordError: bad magic number, bad part sequence or a truncated record.
        """
        key = int(self.keys[pos])
        start, end = int(self.offsets[pos]), int(self.ends[pos])
        if start < 0 or start + 8 > self.file_size:
            raise CorruptRecordError(self.rec_path, key, f'offset {start} outside the file')
        blob = os.pread(self._descriptor(), max(end - start, 8), start)
        parts: List[bytes] = []
        cursor = 0
        while True:
            if cursor + 8 > len(blob):
                raise CorruptRecordError(self.rec_path, key, 'truncated record header')
            magic, lrec = struct.unpack_from('<II', blob, cursor)
            if magic != _MAGIC:
                raise CorruptRecordError(
                    self.rec_path, key, f'bad magic number 0x{magic:08x} at byte {start + cursor}')
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            if cursor + 8 + length > len(blob):
                raise CorruptRecordError(
                    self.rec_path, key,
                    f'record of {length} bytes runs past its end ({len(blob) - cursor - 8} left)')
            expected = (0, 1) if not parts else (2, 3)
            if cflag not in expected:
                raise CorruptRecordError(self.rec_path, key, f'unexpected part flag {cflag}')
            parts.append(blob[cursor + 8:cursor + 8 + length])
            cursor += 8 + ((length + 3) & ~3)
            if cflag in (0, 3):
                break
        return parts[0] if len(parts) == 1 else _MAGIC_BYTES.join(parts)


    def labels(self) -> Tuple[np.ndarray, np.ndarray]:
        """The (first) label of every record, in position order, reading only their headers.

        Returns:
            ``(labels, readable)``: float64 labels, and a boolean mask of the records whose
            header could be read (the others hold NaN; reading them raises
            :class:`CorruptRecordError`).
        """
        labels = np.full(len(self), np.nan)
        readable = np.zeros(len(self), bool)
        fd = self._descriptor()
        head_size = 8 + _IR_SIZE + 4
        for pos in range(len(self)):
            start = int(self.offsets[pos])
            head = os.pread(fd, head_size, start) if 0 <= start < self.file_size else b''
            try:
                if len(head) < 8 + _IR_SIZE:
                    raise ValueError('short')
                magic, lrec = struct.unpack_from('<II', head)
                if magic != _MAGIC:
                    raise ValueError('magic')
                if lrec >> 29 != 0:  # a multi-part record: read it whole
                    labels[pos] = unpack_image_record(self.read(pos))[0]
                else:
                    length = lrec & _LEN_MASK
                    flag, label = struct.unpack_from('<If', head, 8)
                    if length < _IR_SIZE + 4 * flag or (flag > 0 and len(head) < head_size):
                        raise ValueError('short')
                    if flag > 0:  # several labels: the first one is the class
                        label = np.frombuffer(head, np.float32, 1, 8 + _IR_SIZE)[0]
                    labels[pos] = float(label)
                readable[pos] = True
            except (ValueError, struct.error):
                continue
        return labels, readable


def check_labels(records: RecordFile, num_classes: int) -> np.ndarray:
    """Make sure every record's label is a class index of a ``num_classes``-way classifier.

    Records whose header cannot be read are left to the loaders (which skip them), but a file
    in which no record can be read is refused. A ``.classes`` file beside the ``.rec`` (written
    by ``tools/pack_rec.py``) naming another number of classes is logged as a warning.

    Returns:
        The labels (as :meth:`RecordFile.labels`).

    Raises:
        InputError: naming the file, the first offending record and its label.
    """
    labels, readable = records.labels()
    if not readable.any():
        raise InputError(f'none of its {len(records)} records can be read: not a RecordIO file '
                         f'of images, or its .idx belongs to another file', records.rec_path)
    with np.errstate(invalid='ignore'):
        bad = readable & ~((labels >= 0) & (labels < num_classes) & (labels == np.round(labels)))
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise InputError(
            f'record {int(records.keys[pos])} has label {labels[pos]:g}, not a class index '
            f'0..{num_classes - 1} of the {num_classes}-class model '
            f'({int(bad.sum())} such records)', records.rec_path)
    names = os.path.splitext(records.rec_path)[0] + '.classes'
    if os.path.isfile(names):
        with open(names, encoding='utf-8', errors='replace') as f:
            count = sum(1 for line in f if line.strip())
        if count != num_classes:
            logger.warning(
                '%s names %d classes; the model has %d', names, count, num_classes)
    return labels


def unpack_image_record(data: bytes) -> Tuple[float, bytes]:
    """Split an image record into (label, encoded image).

    With several labels (``flag > 0``) the first one is returned.

    Raises:
        ValueError: the record is shorter than its header.
    """
    if len(data) < _IR_SIZE:
        raise ValueError(f'record of {len(data)} bytes is shorter than its {_IR_SIZE}-byte header')
    flag, label, _, _ = struct.unpack_from(_IR_FORMAT, data)
    body = _IR_SIZE
    if flag > 0:
        if len(data) < body + 4 * flag:
            raise ValueError(f'record too short for its {flag} labels')
        label = float(np.frombuffer(data, np.float32, 1, body)[0])
        body += 4 * flag
    return float(label), data[body:]


def pack_image_record(label, key: int, image: bytes) -> bytes:
    """Build an image record (MXNet ``IRHeader`` + encoded image) for ``label`` (scalar or list)."""
    labels = np.atleast_1d(np.asarray(label, dtype=np.float32))
    if labels.size == 1:
        return struct.pack(_IR_FORMAT, 0, float(labels[0]), int(key), 0) + image
    return struct.pack(_IR_FORMAT, labels.size, 0.0, int(key), 0) + labels.tobytes() + image


def check_pixel_count(width: int, height: int) -> None:
    """Refuse an image of more than :data:`MAX_IMAGE_PIXELS` pixels (before decoding it).

    Raises:
        ValueError: naming the size and the limit.
    """
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f'image of {width}x{height} pixels is larger than the {MAX_IMAGE_PIXELS} '
                         f'pixels that are decoded')


def jpeg_size(data: bytes) -> Tuple[int, int] | None:
    """``(width, height)`` from a JPEG's frame header; None when there is none to read."""
    if data[:2] != b'\xff\xd8':
        return None
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            if pos + 9 > end:
                return None
            height, width = struct.unpack_from('>HH', data, pos + 5)
            return width, height
        if marker == 0xDA:  # start of scan before any frame header
            return None
        pos += 2 + struct.unpack_from('>H', data, pos + 2)[0]
    return None


def check_encoded_image(data: bytes) -> str | None:
    """Cheap checks before decoding; returns the reason the data is unusable, or None.

    A JPEG must start with SOI and end (up to a little trailing padding) with EOI: OpenCV decodes a
    truncated JPEG without an error, filling the missing part with grey. Its frame header must
    not claim more than :data:`MAX_IMAGE_PIXELS` pixels.
    """
    if len(data) == 0:
        return 'empty image data'
    if data[:2] == b'\xff\xd8':
        if b'\xff\xd9' not in data[-64:]:
            return 'truncated JPEG (no end-of-image marker)'
        size = jpeg_size(data)
        if size is not None:
            try:
                check_pixel_count(*size)
            except ValueError as err:
                return str(err)
    return None
