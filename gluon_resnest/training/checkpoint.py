"""Atomic per-epoch checkpoints: parameters, trainer state, epoch and RNG state."""
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

logger = logging.getLogger(__name__)

_NAME = re.compile(r'^epoch-(\d{4,})$')
PARAMS = 'model.params'
STATES = 'trainer.states'
RNG = 'rng.pkl'
META = 'meta.json'  # written last: its presence marks a complete checkpoint


def save_checkpoint(directory: str | os.PathLike, epoch: int, net: mx.gluon.Block,
                    trainer: mx.gluon.Trainer, extra: dict[str, Any] | None = None,
                    keep: int = 2) -> Path:
    """Write ``directory/epoch-NNNN`` atomically (temporary folder, then one rename).

    A crash at any point leaves either the previous checkpoints alone or the complete new one.
    Only the ``keep`` newest checkpoints are kept.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f'epoch-{epoch:04d}'
    tmp = Path(tempfile.mkdtemp(prefix=f'.epoch-{epoch:04d}-', dir=root))
    try:
        net.save_parameters(str(tmp / PARAMS))
        trainer.save_states(str(tmp / STATES))
        with open(tmp / RNG, 'wb') as f:
            pickle.dump({'python': random.getstate(), 'numpy': np.random.get_state()}, f)
        meta = {'epoch': epoch, **(extra or {})}
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
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob('.epoch-*'):  # left by a run killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    return final


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first."""
    root = Path(directory)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / META).is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def load_checkpoint(path: str | os.PathLike, net: mx.gluon.Block, trainer: mx.gluon.Trainer,
                    ctx: Any = None) -> dict[str, Any]:
    """Restore parameters, trainer state and RNG state; return the checkpoint's metadata."""
    path = Path(path)
    net.load_parameters(str(path / PARAMS), ctx=ctx)
    trainer.load_states(str(path / STATES))
    with open(path / RNG, 'rb') as f:
        rng = pickle.load(f)
    random.setstate(rng['python'])
    np.random.set_state(rng['numpy'])
    with open(path / META) as f:
        return json.load(f)
