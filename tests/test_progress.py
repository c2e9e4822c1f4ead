"""Progress reports: plain log lines when the stream is not a terminal."""
from __future__ import annotations

import io
import logging

from gluon_resnest.progress import PlainProgress, progress


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _logger() -> tuple[logging.Logger, _Recorder]:
    log = logging.getLogger('test_progress')
    log.setLevel(logging.INFO)
    log.propagate = False
    log.handlers = [recorder := _Recorder()]
    return log, recorder


def test_not_a_terminal_gives_plain_progress():
    assert isinstance(progress(total=3, stream=io.StringIO()), PlainProgress)


def test_one_line_per_interval_and_one_at_the_end():
    log, recorder = _logger()
    bar = PlainProgress(total=4, desc='epoch 1/2', interval=0, log=log)
    for step in range(4):
        bar.set_postfix(loss=f'{step:.3f}')
        bar.update()
    bar.close()
    bar.close()  # the final line is written once
    assert len(recorder.lines) == 4  # steps 1-3, then the end (step 4 is not repeated)
    assert recorder.lines[0].startswith('epoch 1/2: 1/4 (25%), ')
    assert recorder.lines[0].endswith('loss=0.000')
    assert recorder.lines[-1].startswith('epoch 1/2: 4/4 (100%)')
    assert recorder.lines[-1].endswith('(done)')
    assert not any('\r' in line or '\n' in line for line in recorder.lines)


def test_long_interval_logs_only_the_end():
    log, recorder = _logger()
    items = list(PlainProgress(range(50), total=50, desc='evaluate', interval=3600, log=log))
    assert items == list(range(50))
    assert len(recorder.lines) == 1 and recorder.lines[0].startswith('evaluate: 50/50')
