"""Progress of long loops: a tqdm bar on a terminal, plain log lines anywhere else.

A bar redraws itself with carriage returns. Under ``horovodrun``, in a log file or a batch
system, nothing interprets them: ``horovodrun`` prefixes every chunk it relays, so a bar
becomes one enormous line. When the stream is not a terminal, :func:`progress` therefore
logs one line at most every ``interval`` seconds, and one when the loop ends.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, Iterable, Iterator, TextIO

__all__ = ['PlainProgress', 'progress']

logger = logging.getLogger(__name__)


class PlainProgress:
    """A progress report as log lines, with the subset of tqdm's interface the loops use.

    Args:
        iterable: Wrapped iterable, or ``None`` to count with :meth:`update`.
        total: Expected number of steps (shown as ``n/total``).
        desc: What is progressing, e.g. ``'epoch 3/120'``.
        interval: Seconds between two lines; 0 logs every step.
        unit: Name of a step, for the rate.
        log: Where the lines go.
    """

    def __init__(self, iterable: Iterable | None = None, total: int | None = None,
                 desc: str = '', interval: float = 30.0, unit: str = 'it',
                 log: logging.Logger = logger) -> None:
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.interval = interval
        self.unit = unit
        self.log = log
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self._start = self._last = time.monotonic()
        self._closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def set_postfix(self, **values: Any) -> None:
        """Values shown after the count (e.g. the loss), as with tqdm."""
        self.postfix = values

    def update(self, n: int = 1) -> None:
        """Count ``n`` more steps; log a line if ``interval`` seconds passed since the last."""
        self.n += n
        now = time.monotonic()
        finished = self.total is not None and self.n >= self.total  # close() reports it
        if now - self._last >= self.interval and not finished:
            self._last = now
            self.log.info('%s', self._line(now))

    def close(self) -> None:
        """Log the final line (once)."""
        if not self._closed:
            self._closed = True
            self.log.info('%s (done)', self._line(time.monotonic()))

    def _line(self, now: float) -> str:
        elapsed = now - self._start
        count = f'{self.n}/{self.total}' if self.total else str(self.n)
        if self.total:
            count += f' ({100 * self.n / self.total:.0f}%)'
        rate = f'{self.n / elapsed:.2f} {self.unit}/s' if elapsed > 0 else '?'
        parts = [f'{self.desc}: {count}', f'{elapsed:.0f}s', rate]
        parts += [f'{k}={v}' for k, v in self.postfix.items()]
        return ', '.join(parts)


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = '',
             unit: str = 'it', interval: float = 30.0, stream: TextIO | None = None) -> Any:
    """A tqdm bar when ``stream`` (default stderr) is a terminal, else a :class:`PlainProgress`.

    Both count with ``update()``, take ``set_postfix(**values)`` and ``close()``, and iterate
    over ``iterable`` when one is given.
    """
    stream = stream or sys.stderr
    if stream.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False,
                    dynamic_ncols=True, file=stream)
    return PlainProgress(iterable, total=total, desc=desc, interval=interval, unit=unit)
