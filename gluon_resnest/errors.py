"""One way for every tool and the trainer to report bad input.

A tool run with bad input (a missing, empty, unreadable or wrong file, an out-of-range number,
a wrong architecture) prints exactly one line on stderr and exits with status 2::

    pack_rec: error: label -1 of line 3 is not a class index 0, 1, ... (data/train.lst)

There is no traceback for such errors; any other exception is a bug and keeps its traceback.
:func:`run_tool` draws that line; :class:`InputError` carries the offending file apart from the
message, and :class:`ToolParser` makes argparse follow the same format.
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
from typing import Callable, NoReturn, Sequence

__all__ = ['EXIT_BAD_INPUT', 'MAX_CLASSES', 'MAX_IMAGE_SIZE', 'MIN_IMAGE_SIZE', 'InputError',
           'ToolParser', 'describe', 'float_in', 'image_size', 'int_in', 'missing', 'mxnet_reason',
           'run_tool']

logger = logging.getLogger(__name__)

EXIT_BAD_INPUT = 2

# errno values of an OSError that says something about the user's files or machine, not a bug.
_INPUT_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR,
                           errno.EEXIST, errno.EROFS, errno.ENOSPC, errno.ENAMETOOLONG,
                           errno.ELOOP, errno.EDQUOT, errno.ENOTEMPTY})


class InputError(ValueError):
    """Bad user input: ``what`` is wrong, ``path`` (if any) is the file or folder at fault.

    Its message is ``what (path)``, the form every tool prints.
    """

    def __init__(self, what: str, path: str | os.PathLike | None = None) -> None:
        self.what = what
        self.path = None if path is None else os.fspath(path)
        super().__init__(f'{what} ({self.path})' if self.path else what)

    def __reduce__(self):
        return type(self), (self.what, self.path)


def missing(what: str, path: str | os.PathLike) -> FileNotFoundError:
    """A FileNotFoundError that tools print as ``what (path)``."""
    return FileNotFoundError(errno.ENOENT, what, os.fspath(path))


def _is_input_error(err: BaseException) -> bool:
    if isinstance(err, OSError):
        return err.errno in _INPUT_ERRNOS or isinstance(err, (FileNotFoundError,
                                                              PermissionError))
    return isinstance(err, ValueError)


def describe(err: BaseException) -> str:
    """The one-line description of ``err`` that a tool prints (``what (file)`` when known)."""
    if isinstance(err, OSError) and err.filename:
        what = err.strerror or type(err).__name__
        return f'{what} ({os.fspath(err.filename)})'
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _terminate(signum, frame) -> NoReturn:  # noqa: ARG001 - signal handler signature
    # SIGTERM (a job scheduler, timeout(1), kill) unwinds the tool like Ctrl-C: `finally`
    # blocks remove temporary files instead of leaving them behind.
    raise SystemExit(128 + signum)


def _default_sigterm_in_child() -> None:
    # A forked helper (an encoder or decoder process) must die on SIGTERM as before: one that
    # unwound while holding its pool's queue lock would hang the pool's shutdown, and a Python
    # handler can miss a signal that arrives right after the fork.
    if signal.getsignal(signal.SIGTERM) is _terminate:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


_fork_hook = []


def run_tool(prog: str, main: Callable[[Sequence[str] | None], int],
             argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)`` and turn bad input into one line on stderr and status 2.

    Args:
        prog: tool name printed in front of the message.
        main: the tool's body; returns the exit status.
        argv: command-line arguments (default ``sys.argv[1:]``).
    """
    if not _fork_hook:
        os.register_at_fork(after_in_child=_default_sigterm_in_child)
        _fork_hook.append(True)
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        return main(argv)
    except (OSError, ValueError) as err:
        if not _is_input_error(err):
            raise
        logger.debug('bad input', exc_info=True)
        print(f'{prog}: error: {describe(err)}', file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class ToolParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line, ``prog: error: message``, with status 2."""

    def __init__(self, prog: str, **kwargs) -> None:
        kwargs.setdefault('formatter_class', argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(prog=prog, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f'{self.prog}: error: {message} (see --help)\n')


#: Image sizes the networks accept: five stride-2 stages need 32 pixels; far beyond 2048 a
#: single image no longer fits in memory.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 2048
#: Most classes a network or a data set may have (``--classes``, labels in a ``.lst``).
MAX_CLASSES = 10**6


def int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[low, high]`` (``high`` None: no upper bound)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected an integer, got {text!r}') from None
        if value < low or (high is not None and value > high):
            bounds = f'in [{low}, {high}]' if high is not None else f'>= {low}'
            raise argparse.ArgumentTypeError(f'must be {bounds}, got {value}')
        return value
    parse.__name__ = 'integer'
    return parse


def float_in(low: float, high: float | None = None) -> Callable[[str], float]:
    """An argparse ``type``: a finite number in ``[low, high]``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected a number, got {text!r}') from None
        if not (value >= low and (high is None or value <= high)):
            bounds = f'in [{low}, {high}]' if high is not None else f'>= {low}'
            raise argparse.ArgumentTypeError(f'must be {bounds}, got {text}')
        return value
    parse.__name__ = 'number'
    return parse


#: argparse ``type`` of an image, input or crop size.
image_size = int_in(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)


def mxnet_reason(err: BaseException) -> str:
    """The informative line of an MXNet error (whose text starts with a C++ stack trace)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in reversed(lines):
        if 'Check failed' in line or line.startswith(('MXNetError', 'Error')):
            return line.split('MXNetError: ', 1)[-1]
    skip = ('Traceback', 'File ', '[bt]', '  ')
    useful = [line for line in lines if not line.startswith(skip) and not line[:1].isdigit()]
    return useful[-1] if useful else (lines[-1] if lines else type(err).__name__)
