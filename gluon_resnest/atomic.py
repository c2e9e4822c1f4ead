"""File sets that appear whole or not at all, and the checksums that prove it.

Every set of files the project writes (an export, an INT8 export, an ONNX file, a model server
archive, a packed data set, a checkpoint's files) goes through :class:`FileSet`: each file is
written under a temporary name in its own folder (``NAME.tmpPID``), flushed to disk, and only
then are all of them renamed into place, the meta file last, with SIGTERM, SIGINT and SIGHUP
held back for the few microseconds the renames take. A failure (a full disk, a read-only file
system, an error in the writer) or a signal before that point removes the temporaries and
leaves the previous set as it was; temporaries of a process that was killed outright are
removed by the next writer of the same files.

Meta files record a SHA-256 of each file of their set (:func:`checksums`); readers compare it
(:func:`verify_checksums`), so that a damaged file, or a set mixed from two writes, is refused
instead of used.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import signal
from typing import Any, Callable, Iterable, Mapping

__all__ = ['CHECKSUM_KEY', 'FileSet', 'checksums', 'make_folder', 'remove_stale_temporaries',
           'sha256_of', 'temporary_name', 'verify_checksums', 'write_failure']

logger = logging.getLogger(__name__)

#: Key of the ``{file name: SHA-256}`` table in meta files.
CHECKSUM_KEY = 'sha256'
_HELD_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def temporary_name(final: str | os.PathLike) -> str:
    """The temporary name this process writes ``final`` under: ``FINAL.tmpPID``."""
    return f'{os.fspath(final)}.tmp{os.getpid()}'


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's contents."""
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for block in iter(lambda: handle.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def checksums(paths: Iterable[str | os.PathLike]) -> dict[str, str]:
    """``{file name: SHA-256}`` of files (the names without their folder)."""
    return {os.path.basename(os.fspath(p)): sha256_of(p) for p in paths}


def verify_checksums(folder: str | os.PathLike, expected: Mapping[str, str],
                     names: Iterable[str] | None = None, meta: str | None = None) -> None:
    """Compare files in ``folder`` with the checksums a meta file records.

    Args:
        folder: Folder of the files.
        expected: ``{file name: SHA-256}`` from the meta file.
        names: The files to check (default: every file in ``expected``); a name the table
            lacks is an error.
        meta: The meta file, named in errors.

    Raises:
        InputError: a file does not match (damaged, or from another write than its meta).
    """
    from .errors import InputError

    if not isinstance(expected, Mapping):
        raise InputError(f'"{CHECKSUM_KEY}" is not a table of file checksums', meta)
    for name in (expected if names is None else names):
        path = os.path.join(os.fspath(folder), name)
        if name not in expected:
            raise InputError(f'{name} has no checksum in its meta file {meta}: the files do not '
                             f'belong together', path)
        if sha256_of(path) != expected[name]:
            raise InputError('the file does not match the SHA-256 recorded in '
                             f'{os.path.basename(meta) if meta else "its meta file"}: it is '
                             'damaged, or not the file written with that meta file', path)


def remove_stale_temporaries(folder: str | os.PathLike, stems: Iterable[str]) -> None:
    """Delete ``STEM.tmpPID`` and ``STEM.tmpPID-*`` files in ``folder`` whose process is gone."""
    stems = [s for s in stems if s]
    if not stems:
        return
    pattern = re.compile('^(?:' + '|'.join(map(re.escape, stems)) + r')\.tmp(\d+)(?:-.*)?$')
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        match = pattern.match(name)
        if match and not _process_exists(int(match.group(1))):
            logger.info('removing %s, left by an interrupted run', name)
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OverflowError:
        return False
    return True


def write_failure(err: BaseException, path: str | os.PathLike) -> OSError:
    """An OSError naming ``path`` for a failed write (an MXNet error says neither why nor where).

    A full file system is reported as such (``errno.ENOSPC``).
    """
    if isinstance(err, OSError) and err.errno is not None:
        return OSError(err.errno, err.strerror or os.strerror(err.errno), os.fspath(path))
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    try:
        stats = os.statvfs(folder)
        full = stats.f_bavail == 0 or stats.f_favail == 0
    except OSError:
        full = False
    code = errno.ENOSPC if full else errno.EIO
    return OSError(code, os.strerror(code), os.fspath(path))


def make_folder(folder: str | os.PathLike) -> None:
    """Create ``folder`` and its parents; a failure names the folder (or the file in the way).

    Raises:
        OSError: e.g. ``Not a directory`` naming a file that stands where a folder belongs.
    """
    folder = os.path.abspath(os.fspath(folder))
    try:
        os.makedirs(folder, exist_ok=True)
    except FileExistsError:
        blocking = folder
        while not os.path.exists(blocking):
            blocking = os.path.dirname(blocking)
        if not os.path.exists(folder) or not os.path.isdir(folder):
            raise OSError(errno.ENOTDIR, 'Not a directory: a file stands where a folder belongs',
                          blocking) from None
    except OSError as err:
        raise write_failure(err, folder) from None


class FileSet:
    """A set of files written under temporary names and renamed into place together.

    Use as a context manager: leaving the block without :meth:`commit` (an exception, a
    signal) deletes every temporary::

        with FileSet(stale=[prefix]) as files:
            files.write_bytes('out/model.classes', names)
            mx.nd.save(files.temp('out/model-0000.params'), arrays)
            files.write_json('out/model-meta.json', {..., 'sha256': files.checksums()})
            files.commit()       # meta last: the file registered last is renamed last

    Args:
        stale: Name stems (paths) whose temporaries left by dead processes are removed first.
    """

    def __init__(self, stale: Iterable[str | os.PathLike] = ()) -> None:
        self._files: dict[str, str] = {}  # final -> temporary, in registration order
        self.committed = False
        for stem in stale:
            stem = os.fspath(stem)
            remove_stale_temporaries(os.path.dirname(os.path.abspath(stem)),
                                     [os.path.basename(stem)])

    def __enter__(self) -> FileSet:
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.committed:
            self.discard()

    def temp(self, final: str | os.PathLike, temporary: str | None = None) -> str:
        """Register ``final`` and return the temporary name to write it under.

        The folder must exist. An empty temporary file is created at once, so that an
        unwritable folder (read-only, full, missing) is reported with its name before any
        long work.

        Args:
            final: Where the file belongs.
            temporary: Another temporary name in the same folder (for writers that choose
                their own file names); default :func:`temporary_name`.
        """
        final = os.fspath(final)
        temporary = temporary or temporary_name(final)
        self._files.pop(final, None)
        self._files[final] = temporary
        try:
            with open(temporary, 'wb'):
                pass
        except OSError as err:
            raise write_failure(err, final) from None
        return temporary

    def write_bytes(self, final: str | os.PathLike, data: bytes) -> str:
        """Write ``data`` as the temporary of ``final``; return the temporary's name."""
        path = self.temp(final)
        try:
            with open(path, 'wb') as handle:
                handle.write(data)
        except OSError as err:
            raise write_failure(err, final) from None
        return path

    def write_text(self, final: str | os.PathLike, text: str) -> str:
        """Write ``text`` (UTF-8) as the temporary of ``final``."""
        return self.write_bytes(final, text.encode('utf-8'))

    def write_json(self, final: str | os.PathLike, value: Any) -> str:
        """Write ``value`` as indented JSON (keys sorted) as the temporary of ``final``."""
        import json

        return self.write_text(final, json.dumps(value, indent=2, sort_keys=True) + '\n')

    def run(self, final: str | os.PathLike, writer: Callable[[str], Any]) -> Any:
        """Call ``writer(temporary)`` (e.g. an MXNet save); its failure names ``final``."""
        path = self.temp(final)
        try:
            return writer(path)
        except Exception as err:  # noqa: BLE001 - an MXNet error is a RuntimeError
            if isinstance(err, OSError) or type(err).__name__ == 'MXNetError':
                raise write_failure(err, final) from None
            raise

    def checksums(self, finals: Iterable[str | os.PathLike] | None = None) -> dict[str, str]:
        """``{final file name: SHA-256 of its temporary}`` (default: every file so far)."""
        chosen = self._files if finals is None else [os.fspath(f) for f in finals]
        return {os.path.basename(f): sha256_of(self._files[f]) for f in chosen}

    def commit(self) -> list[str]:
        """Flush every temporary to disk, then rename them into place in registration order.

        Returns:
            The final paths.
        """
        for final, temporary in self._files.items():
            try:
                fd = os.open(temporary, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as err:
                raise write_failure(err, final) from None
        held = _HELD_SIGNALS
        try:
            previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
        except (AttributeError, OSError, ValueError):  # pragma: no cover - not POSIX
            previous = None
        try:
            for final, temporary in self._files.items():
                os.replace(temporary, final)
            self.committed = True
        finally:
            if previous is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        for folder in {os.path.dirname(os.path.abspath(f)) for f in self._files}:
            _fsync_folder(folder)
        return list(self._files)

    def discard(self) -> None:
        """Delete every temporary that exists."""
        for temporary in self._files.values():
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(temporary)


def _fsync_folder(folder: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
