"""A run directory belongs to one run: a lock while it trains, an identity for its lifetime.

* ``run.lock``: held (``flock``) by rank 0 while a run trains; it names the process and host.
  A second training into the same directory is refused while the first one lives; a lock left
  by a process that died (``kill -9``, a crash, a lost node) is not held any more and is taken
  over with a note in the log.
* ``run.json``: the run's identity (a random id, when it started, the recipe). A new run into a
  directory that holds another run's files is refused unless it is started with ``--overwrite``
  (which deletes them first); ``--resume`` continues only the run recorded there, and only with
  settings that do not change what it computes (checked before anything is written).
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = ['IDENTITY', 'LOCK', 'RESUMABLE_CHANGES', 'RUN_FILES', 'RunLock', 'check_resume',
           'claim_run_dir',
           'check_writable', 'clear_run', 'new_identity', 'read_identity', 'used_by_a_run',
           'write_identity']

logger = logging.getLogger(__name__)

LOCK = 'run.lock'
IDENTITY = 'run.json'
#: What a training run writes into its directory (``--overwrite`` deletes exactly these).
RUN_FILES = (IDENTITY, 'config.json', 'metrics.jsonl', 'curves.png', 'checkpoints', 'export',
             'workers')
#: Settings a resumed run may change: the schedule's length and learning rate (lowering it is
#: the remedy for a diverged run), how often it validates, how it decodes.
RESUMABLE_CHANGES = frozenset({'epochs', 'lr', 'base_lr', 'num_workers', 'val_interval',
                               'recipe'})


class RunLock:
    """Exclusive ownership of a run directory by one process (rank 0).

    Use as a context manager, or call :meth:`acquire` and :meth:`release`.

    Raises:
        InputError: another live process holds the directory.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            owner = _describe_owner(self.path)
            raise InputError(f'the run directory is in use by another training ({owner}); '
                             f'wait for it to end or choose another --run-dir',
                             self.path.parent) from None
        previous = _read_json(self.path)
        if previous:
            logger.warning('taking over a stale lock of a training that did not end cleanly '
                           '(%s)', _describe_owner(self.path))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({'pid': os.getpid(), 'host': socket.gethostname(),
                                  'since': time.strftime('%Y-%m-%dT%H:%M:%S')}).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Delete the lock file and let go of the lock (the kernel also does on exit)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text() or '{}')
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _describe_owner(path: Path) -> str:
    info = _read_json(path)
    if not info:
        return 'owner unknown'
    return f'pid {info.get("pid")} on {info.get("host")} since {info.get("since")}'


def check_writable(run_dir: str | os.PathLike) -> None:
    """Create the run directory and prove it, and its ``checkpoints/`` if present, writable.

    Raises:
        InputError: naming the folder that cannot be created or written.
    """
    checkpoints = Path(run_dir) / 'checkpoints'
    for folder in (Path(run_dir), *([checkpoints] if checkpoints.exists() else [])):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f'.write-test-{os.getpid()}'
            probe.write_bytes(b'')
            probe.unlink()
        except OSError as err:
            raise InputError(f'cannot write into the run directory: {err.strerror}',
                             folder) from None


def new_identity(config: dict[str, Any]) -> dict[str, Any]:
    """A fresh run identity for ``config``."""
    return {'run_id': uuid.uuid4().hex, 'started': time.strftime('%Y-%m-%dT%H:%M:%S'),
            'recipe': config.get('recipe'), 'model': config.get('model')}


def read_identity(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The identity recorded in ``run_dir``, or None."""
    path = Path(run_dir) / IDENTITY
    if not path.exists():
        return None
    info = _read_json(path)
    if 'run_id' not in info:
        raise InputError('not a run identity file (expected a JSON object with run_id)', path)
    return info


def write_identity(run_dir: str | os.PathLike, identity: dict[str, Any]) -> None:
    """Write ``run.json`` atomically."""
    path = Path(run_dir) / IDENTITY
    tmp = path.with_suffix(f'.tmp{os.getpid()}')
    tmp.write_text(json.dumps(identity, indent=2) + '\n')
    os.replace(tmp, path)


def used_by_a_run(run_dir: str | os.PathLike) -> list[str]:
    """The run files present in ``run_dir``."""
    root = Path(run_dir)
    return [name for name in RUN_FILES if (root / name).exists()
            and not (name == 'checkpoints' and not any((root / name).iterdir()))]


def clear_run(run_dir: str | os.PathLike) -> None:
    """Delete the files of a previous run (``--overwrite``); other files are left alone."""
    root = Path(run_dir)
    for name in RUN_FILES:
        path = root / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def check_resume(run_dir: str | os.PathLike, config: dict[str, Any]) -> dict[str, Any] | None:
    """Settings check of ``--resume``: returns the recorded identity (None: nothing to resume).

    Raises:
        InputError: the directory records a run whose settings differ from ``config`` in
            anything but :data:`RESUMABLE_CHANGES`.
    """
    identity = read_identity(run_dir)
    path = Path(run_dir) / 'config.json'
    if not path.is_file():
        return identity
    saved = _read_json(path)
    if not saved:
        raise InputError('cannot read the configuration of the run to resume', path)
    config = json.loads(json.dumps(config))  # tuples become lists, as in the saved file
    changed = sorted(k for k in set(saved) | set(config)
                     if k not in RESUMABLE_CHANGES and saved.get(k) != config.get(k))
    if changed:
        details = ', '.join(f'{k}: {saved.get(k)!r} -> {config.get(k)!r}' for k in changed[:4])
        more = f' and {len(changed) - 4} more' if len(changed) > 4 else ''
        raise InputError(f'--resume would continue a run with other settings ({details}{more}); '
                         f'resume with the same settings, or start a new run with --overwrite '
                         f'or another --run-dir', path)
    return identity


def _check_something_to_resume(run_dir: str | os.PathLike,
                               identity: dict[str, Any] | None) -> None:
    """Refuse a ``--resume`` that would train from scratch over a recorded run's files.

    Resuming an empty directory starts a new run; a directory that records a run (``run.json``)
    must hold a checkpoint of that run, and checkpoints of another run are never taken over.
    """
    from .checkpoint import list_checkpoints, run_of

    folder = Path(run_dir) / 'checkpoints'
    found = list_checkpoints(folder)
    if identity is None:
        others = sorted(p.name for p in found if run_of(p) is not None)
        if others:
            raise InputError(f'--resume: the checkpoints ({", ".join(others[:3])}) belong to a '
                             f'run that no {IDENTITY} records; nothing was written. Start a new '
                             f'run with --overwrite (deletes them) or another --run-dir', folder)
        return
    if not list_checkpoints(folder, identity['run_id']):
        others = sorted(p.name for p in found)
        held = (f'it holds only checkpoints of other runs ({", ".join(others[:3])})' if others
                else 'it holds no checkpoint')
        raise InputError(f'--resume: no checkpoint of the run recorded in {IDENTITY} (id '
                         f'{identity["run_id"]}): {held}; nothing was written. Start a new run '
                         f'with --overwrite (deletes its files) or another --run-dir',
                         Path(run_dir) / IDENTITY)


def claim_run_dir(run_dir: str | os.PathLike, config: dict[str, Any], resume: bool,
                  overwrite: bool) -> tuple[RunLock, dict[str, Any]]:
    """Rank 0, before anything else is written: take the directory for this run.

    Checks that the directory and its ``checkpoints/`` are writable, locks it, and either
    validates ``--resume`` against the recorded run or makes sure a new run does not mix with
    an old one (``--overwrite`` deletes the old run's files). Records the run's identity.

    Returns:
        The held lock (release it when the run ends) and the run's identity.

    Raises:
        InputError: the directory is not writable, in use, holds another run, or the resumed
            run was made with other settings.
    """
    if resume and overwrite:
        raise InputError('--resume continues a run and --overwrite deletes it: give one')
    check_writable(run_dir)
    lock = RunLock(run_dir).acquire()
    try:
        if resume:
            identity = check_resume(run_dir, config)
            _check_something_to_resume(run_dir, identity)
            identity = identity or new_identity(config)
        else:
            used = used_by_a_run(run_dir)
            if used and not overwrite:
                raise InputError(f'the run directory holds another run ({", ".join(used)}); '
                                 f'continue it with --resume, or start over with --overwrite '
                                 f'(deletes those files)', run_dir)
            if used:
                logger.warning('--overwrite: deleting %s in %s', ', '.join(used), run_dir)
                clear_run(run_dir)
                check_writable(run_dir)
            identity = new_identity(config)
        write_identity(run_dir, identity)
    except BaseException:
        lock.release()
        raise
    return lock, identity
