"""Atomic per-epoch checkpoints: parameters, trainer state, epoch and RNG state.

A checkpoint is a folder written under a temporary name and renamed into place when complete;
its ``meta.json`` (written last) records the epoch, the run id and a SHA-256 of every other
file, which resuming verifies: a file that does not match is damage, like a truncated one.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np

from ..atomic import CHECKSUM_KEY, checksums, verify_checksums
from ..errors import InputError, mxnet_reason

logger = logging.getLogger(__name__)

_NAME = re.compile(r'^epoch-(\d{4,})$')
PARAMS = 'model.params'
STATES = 'trainer.states'
RNG = 'rng.pkl'
META = 'meta.json'  # written last: its presence marks a complete checkpoint
MODEL = 'model.json'  # what rebuilds the network: model name, classes, model_kwargs


def save_checkpoint(directory: str | os.PathLike, epoch: int, net: mx.gluon.Block,
                    trainer: mx.gluon.Trainer, extra: dict[str, Any] | None = None,
                    keep: int = 2, model_spec: dict[str, Any] | None = None) -> Path:
    """Write ``directory/epoch-NNNN`` atomically (temporary folder, then one rename).

    A crash at any point leaves either the previous checkpoints alone or the complete new one.
    Only the ``keep`` newest checkpoints of the same run (``extra['run_id']``, when given) are
    kept; checkpoints of other runs are never deleted.

    Args:
        model_spec: how to rebuild the network (:data:`MODEL`: ``model``, ``classes``,
            ``model_kwargs``, ...), so that tools can load ``model.params`` on their own.

    Raises:
        ValueError: ``keep`` < 1 (that would delete the checkpoint just written).
    """
    if keep < 1:
        raise ValueError(f'keep must be >= 1 (the newest checkpoint is always kept), got {keep}')
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f'epoch-{epoch:04d}'
    run_id = (extra or {}).get('run_id')
    if run_id is not None and (final / META).is_file() and run_of(final) not in (run_id, None):
        raise InputError(f'{final.name} belongs to another run (id {run_of(final)}); it is not '
                         f'replaced', final)
    tmp = Path(tempfile.mkdtemp(prefix=f'.epoch-{epoch:04d}-', dir=root))
    try:
        net.save_parameters(str(tmp / PARAMS))
        trainer.save_states(str(tmp / STATES))
        with open(tmp / RNG, 'wb') as f:
            pickle.dump({'python': random.getstate(), 'numpy': np.random.get_state()}, f)
        if model_spec is not None:
            (tmp / MODEL).write_text(json.dumps(model_spec, indent=2) + '\n')
        files = [tmp / name for name in (PARAMS, STATES, RNG, MODEL) if (tmp / name).is_file()]
        meta = {'epoch': epoch, **(extra or {}), CHECKSUM_KEY: checksums(files)}
        with open(tmp / META, 'w') as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(root, (extra or {}).get('run_id'))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob('.epoch-*'):  # left by a run killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    return final


def list_checkpoints(directory: str | os.PathLike, run_id: str | None = None) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first (of run ``run_id`` only, if given)."""
    root = Path(directory)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / META).is_file()]
    if run_id is not None:
        found = [p for p in found if run_of(p) in (run_id, None)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def run_of(path: Path) -> str | None:
    """The run id a checkpoint folder records (None: none, or an unreadable meta file)."""
    try:
        return json.loads((path / META).read_text()).get('run_id')
    except (OSError, ValueError, AttributeError):
        return None


def latest_checkpoint(directory: str | os.PathLike, run_id: str | None = None) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(directory, run_id)
    return found[-1] if found else None


def resume_checkpoint(directory: str | os.PathLike, net: mx.gluon.Block,
                      trainer: mx.gluon.Trainer, ctx: Any = None,
                      run_id: str | None = None) -> tuple[Path, dict[str, Any]] | None:
    """Load the newest checkpoint that is complete *and* loads; None when there is none.

    A damaged newest checkpoint (a truncated file, a disk error) is reported and the one
    before it is tried, and so on.

    Raises:
        InputError: checkpoints exist but none of them can be loaded.
    """
    candidates = list_checkpoints(directory, run_id)
    failures = []
    for path in reversed(candidates):
        try:
            meta = load_checkpoint(path, net, trainer, ctx=ctx)
        except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError, ImportError,
                IndexError, OverflowError, pickle.UnpicklingError, mx.base.MXNetError) as err:
            reason = mxnet_reason(err) if isinstance(err, mx.base.MXNetError) else str(err)
            logger.warning('checkpoint %s cannot be loaded (%s)%s', path, reason,
                           '; trying the one before it' if path != candidates[0] else '')
            failures.append(path.name)
            continue
        if failures:
            logger.warning('resuming from %s, the newest checkpoint that loads (skipped: %s)',
                           path, ', '.join(failures))
        return path, meta
    if failures:
        raise InputError(f'no checkpoint can be loaded (tried {", ".join(failures)}); start '
                         f'again with --overwrite', directory)
    return None


def load_checkpoint(path: str | os.PathLike, net: mx.gluon.Block, trainer: mx.gluon.Trainer,
                    ctx: Any = None) -> dict[str, Any]:
    """Restore parameters, trainer state and RNG state; return the checkpoint's metadata."""
    path = Path(path)
    with open(path / META) as f:
        meta = json.load(f)
    if not isinstance(meta, dict) or not isinstance(meta.get('epoch'), int) \
            or isinstance(meta['epoch'], bool) or meta['epoch'] < 0:
        raise ValueError(f'{path / META} is not a checkpoint description (a JSON object with '
                         f'the epoch)')
    if CHECKSUM_KEY in meta:
        verify_checksums(path, meta[CHECKSUM_KEY], (PARAMS, STATES, RNG), meta=str(path / META))
    else:
        logger.warning('%s records no checksums (written by an older version): its files '
                       'cannot be verified', path)
    with open(path / RNG, 'rb') as f:
        rng = pickle.load(f)
    if not isinstance(rng, dict) or not {'python', 'numpy'} <= set(rng):
        raise ValueError(f'{path / RNG} does not hold the random generators\' states')
    net.load_parameters(str(path / PARAMS), ctx=ctx)
    trainer.load_states(str(path / STATES))
    try:
        random.setstate(rng['python'])
        np.random.set_state(rng['numpy'])
    except (TypeError, ValueError) as err:
        raise ValueError(f'{path / RNG} does not hold the random generators\' states: '
                         f'{err}') from None
    return meta
