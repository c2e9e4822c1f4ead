"""The meta file of an export: what a consumer needs to feed the network, and its checksums.

An export written by :func:`gluon_resnest.deploy.export_network` is three files (four with
class names), written as one set (:class:`gluon_resnest.atomic.FileSet`), the meta file last:

* ``PREFIX-symbol.json`` and ``PREFIX-%04d.params``: MXNet's ``HybridBlock.export`` format, which
  ``mx.gluon.SymbolBlock.imports`` and ``mx.mod.Module`` read;
* ``PREFIX.classes`` (optional): one class name per line;
* ``PREFIX-meta.json``: what a consumer needs to feed the network (:data:`META_DEFAULTS`): input
  size, mean/std, and whether the normalisation is inside the graph (``preprocess``, in which
  case the exported network takes 0-255 RGB input), and a SHA-256 of every other file of the
  set (``sha256``). Tools that rewrite an export (the quantizer) keep this file and may add keys.

Readers refuse a prefix without a meta file (an interrupted export, or one that
``HybridBlock.export`` wrote alone: give it one with :func:`write_meta`) and files that do not
match the recorded checksums (:func:`verify_export`).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from typing import Any

from ..atomic import CHECKSUM_KEY, FileSet, checksums, verify_checksums
from ..constants import DEFAULT_CROP
from ..errors import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, InputError
from .preprocess import IMAGENET_MEAN, IMAGENET_STD

__all__ = ['META_DEFAULTS', 'check_export', 'export_paths', 'meta_document', 'read_meta',
           'verify_export', 'write_meta']

logger = logging.getLogger(__name__)

META_DEFAULTS: dict[str, Any] = {
    'format': 'gluon_resnest-export',
    'version': 1,
    'model': None,           # registered model name, when known
    'input_size': DEFAULT_CROP,  # square crop the network was exported for
    'in_channels': 3,
    'mean': list(IMAGENET_MEAN),
    'std': list(IMAGENET_STD),
    'preprocess': False,     # True: the graph normalises; feed 0-255 RGB
    'classes': None,         # number of outputs
    'class_names': None,     # file (next to the export) with one class name per line
    'input_names': ['data'],
    'quantized': False,
}


def export_paths(prefix: str, epoch: int = 0) -> tuple[str, str, str]:
    """File names of an export: ``(symbol, params, meta)``."""
    return f'{prefix}-symbol.json', f'{prefix}-{epoch:04d}.params', f'{prefix}-meta.json'


def meta_document(**fields: Any) -> dict[str, Any]:
    """The contents of a meta file: :data:`META_DEFAULTS` updated with ``fields``."""
    meta = dict(META_DEFAULTS)
    meta.update(fields)
    return meta


def write_meta(prefix: str, **fields: Any) -> str:
    """Write ``PREFIX-meta.json`` for the files of an export already in place; return its path.

    For an export written by ``HybridBlock.export`` alone: the meta file records the SHA-256 of
    ``PREFIX-symbol.json``, ``PREFIX-%04d.params`` (``epoch`` from ``fields``, default 0) and
    the class names file, and defaults for the keys not given.
    """
    epoch = int(fields.get('epoch', 0))
    symbol_file, params_file, path = export_paths(prefix, epoch)
    folder = os.path.dirname(os.path.abspath(prefix))
    names = fields.get('class_names')
    files = [symbol_file, params_file] + ([os.path.join(folder, names)] if names else [])
    fields.setdefault(CHECKSUM_KEY, checksums(f for f in files if os.path.isfile(f)))
    with FileSet(stale=[path]) as out:
        out.write_json(path, meta_document(**fields))
        out.commit()
    return path


def _number_list(value: Any, count: int) -> bool:
    return (isinstance(value, list) and len(value) == count
            and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                    and math.isfinite(v) for v in value))


def _check_meta(meta: dict[str, Any], path: str) -> None:
    """Refuse values no export has (each checked value named, with the file)."""
    def refuse(key: str, expected: str) -> None:
        raise InputError(f'{key}: expected {expected}, got {meta[key]!r}', path)

    def integer(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    size = meta['input_size']
    if not integer(size) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        refuse('input_size', f'a whole number of pixels in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}]')
    if not integer(meta['in_channels']) or not 1 <= meta['in_channels'] <= 64:
        refuse('in_channels', 'a whole number in [1, 64]')
    for key in ('mean', 'std'):
        if not _number_list(meta[key], meta['in_channels']):
            refuse(key, f'a list of {meta["in_channels"]} numbers (one per input channel)')
    if min(meta['std']) <= 0:
        refuse('std', 'numbers above 0')
    for key in ('preprocess', 'quantized'):
        if not isinstance(meta[key], bool):
            refuse(key, 'true or false')
    if meta['classes'] is not None and (not integer(meta['classes']) or meta['classes'] < 1):
        refuse('classes', 'a whole number above 0, or null')
    names = meta['class_names']
    if names is not None and (not isinstance(names, str) or not names
                              or os.path.basename(names) != names):
        refuse('class_names', 'the name of a file beside the export, or null')
    if not isinstance(meta.get('model_kwargs', {}), dict):
        refuse('model_kwargs', 'a JSON object of architecture arguments')
    table = meta.get(CHECKSUM_KEY, {})
    if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in table.items()):
        refuse(CHECKSUM_KEY, 'a JSON object {file name: SHA-256}')


def read_meta(prefix: str) -> dict[str, Any]:
    """Read and check ``PREFIX-meta.json``, filling missing keys from :data:`META_DEFAULTS`.

    Raises:
        InputError: no meta file (the export is incomplete: the meta file is written last),
            not a JSON object, or a value no export has (named).
    """
    path = export_paths(prefix)[2]
    if not os.path.isfile(path):
        if os.path.isdir(path):
            raise InputError('the export\'s meta file is a folder', path)
        raise InputError('no meta file: the export is incomplete (its meta file is written '
                         'last) or was written without one (give it one with '
                         'gluon_resnest.deploy.write_meta)', path)
    try:
        with open(path, 'rb') as handle:
            loaded = json.loads(handle.read().decode('utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f'not valid JSON: {err}', path) from None
    if not isinstance(loaded, dict):
        raise InputError('not a JSON object of export settings', path)
    meta = meta_document(**loaded)
    _check_meta(meta, path)
    return meta


def verify_export(prefix: str, epoch: int, meta: dict[str, Any]) -> None:
    """Compare the export's files with the SHA-256 its meta file records.

    The symbol and params files are checked, and the class names file when the meta file
    names one. An export whose meta file records no checksums (an older version wrote it) is
    loaded with a warning.

    Raises:
        InputError: a file that does not match (damaged, or from another export).
    """
    symbol_file, params_file, meta_file = export_paths(prefix, epoch)
    table = meta.get(CHECKSUM_KEY)
    if not table:
        logger.warning('%s records no checksums (an older export): its files cannot be '
                       'verified; export it again to add them', meta_file)
        return
    names = [os.path.basename(symbol_file), os.path.basename(params_file)]
    if meta.get('class_names') and meta['class_names'] in table:
        names.append(meta['class_names'])
    verify_checksums(os.path.dirname(os.path.abspath(prefix)), table, names, meta=meta_file)


def _available_epochs(prefix: str) -> list[int]:
    folder = os.path.dirname(os.path.abspath(prefix))
    pattern = re.compile(re.escape(os.path.basename(prefix)) + r'-(\d{4})\.params$')
    if not os.path.isdir(folder):
        return []
    return sorted(int(m.group(1)) for m in map(pattern.match, os.listdir(folder)) if m)


def check_export(prefix: str, epoch: int = 0) -> tuple[str, str]:
    """The symbol and params files of an export, or a FileNotFoundError naming what is missing."""
    symbol_file, params_file, _ = export_paths(prefix, epoch)
    if not os.path.isfile(symbol_file):
        raise FileNotFoundError(f'no exported symbol file {symbol_file!r} (prefix {prefix!r})')
    if not os.path.isfile(params_file):
        epochs = _available_epochs(prefix)
        hint = f'; epochs available: {epochs}' if epochs else ''
        raise FileNotFoundError(f'no exported params file {params_file!r}{hint}')
    return symbol_file, params_file


