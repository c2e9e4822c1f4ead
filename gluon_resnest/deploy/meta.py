"""The meta file of an export: what a consumer needs to feed the network.

An export written by :func:`gluon_resnest.deploy.export_network` is three files:

* ``PREFIX-symbol.json`` and ``PREFIX-%04d.params``: MXNet's ``HybridBlock.export`` format, which
  ``mx.gluon.SymbolBlock.imports`` and ``mx.mod.Module`` read;
* ``PREFIX-meta.json``: what a consumer needs to feed the network (:data:`META_DEFAULTS`): input
  size, mean/std, and whether the normalisation is inside the graph (``preprocess``, in which
  case the exported network takes 0-255 RGB input). Tools that rewrite an export (the quantizer)
  keep this file and may add keys.

A prefix without a meta file (an export made elsewhere) is read with :data:`META_DEFAULTS`.
"""
from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

from ..errors import InputError
from .preprocess import IMAGENET_MEAN, IMAGENET_STD

__all__ = ['META_DEFAULTS', 'check_export', 'export_paths', 'read_meta', 'write_meta']

logger = logging.getLogger(__name__)

META_DEFAULTS: dict[str, Any] = {
    'format': 'gluon_resnest-export',
    'version': 1,
    'model': None,           # registered model name, when known
    'input_size': 224,       # square crop the network was exported for
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


def write_meta(prefix: str, **fields: Any) -> str:
    """Write ``PREFIX-meta.json`` (defaults for missing keys); return its path."""
    meta = dict(META_DEFAULTS)
    meta.update(fields)
    path = export_paths(prefix)[2]
    with open(path, 'w', encoding='utf-8') as handle:
        json.dump(meta, handle, indent=2, sort_keys=True)
        handle.write('\n')
    return path


def read_meta(prefix: str) -> dict[str, Any]:
    """Read ``PREFIX-meta.json``, filling missing keys from :data:`META_DEFAULTS`."""
    meta = dict(META_DEFAULTS)
    path = export_paths(prefix)[2]
    if os.path.isfile(path):
        with open(path, 'rb') as handle:
            try:
                loaded = json.loads(handle.read().decode('utf-8'))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ValueError(f'{path!r} is not valid JSON: {err}') from None
        if not isinstance(loaded, dict):
            raise InputError('not a JSON object of export settings', path)
        meta.update(loaded)
    else:
        logger.warning('%s not found: assuming input size %d, ImageNet mean/std, no embedded '
                       'preprocessing', path, meta['input_size'])
    return meta


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


