"""Every ```python block of README.md and docs/*.md runs.

The blocks of one page run in order, in one namespace (a page reads as one session), in a fresh
Python process whose working folder holds the files the page names (``resnest50.params``,
GluonCV checkpoints, ``train.rec``, ...; built here from fresh networks) and whose
``MXNET_HOME`` cache holds ``resnest50.params`` for ``pretrained=True`` (a file put there by hand
is read first: nothing is downloaded; both weight stores point at a closed loopback port). A
page's *prelude* defines only the names its text leaves to the reader (``batch``, ``hvd``, ...).

A block right after ``<!-- no-test: reason -->`` is compiled but not run; the reason must say
what runs the same calls instead.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable

import mxnet as mx
import pytest

import gluon_resnest
from conftest import CLOSED_URL

ROOT = Path(__file__).resolve().parents[1]
PAGES = ['README.md'] + sorted(f'docs/{p.name}' for p in (ROOT / 'docs').glob('*.md'))
NO_TEST = re.compile(r'^<!--\s*no-test:\s*(?P<reason>\S.*?)\s*-->$')
FENCE = '```python'


def python_blocks(page: str) -> list[tuple[int, str, str | None]]:
    """``(first line number, code, no-test reason or None)`` of each python block of a page."""
    lines = (ROOT / page).read_text().splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == FENCE:
            start = i + 1
            end = start
            while lines[end].strip() != '```':
                end += 1
            before = [line.strip() for line in lines[:i] if line.strip()]
            marker = NO_TEST.match(before[-1]) if before else None
            blocks.append((start + 1, '\n'.join(lines[start:end]) + '\n',
                           marker.group('reason') if marker else None))
            i = end
        i += 1
    return blocks


def _save_fresh(build: Callable[[], mx.gluon.HybridBlock], path: Path,
                sample: tuple[int, ...] | None = None) -> None:
    """Save the parameters of a freshly initialised network (a stand-in checkpoint)."""
    net = build()
    net.initialize()
    if sample is not None:
        net(mx.nd.zeros(sample))  # completes deferred initialisation
    net.save_parameters(str(path))


def _resnest50_cache(work: Path) -> None:
    models = work / 'mxnet_home' / 'models'
    models.mkdir(parents=True)
    _save_fresh(lambda: gluon_resnest.get_model('resnest50'), models / 'resnest50.params')


def _gluoncv_checkpoints(work: Path, detector: bool) -> None:
    from gluoncv import model_zoo

    with gluon_resnest.gluoncv_override():
        # The crop size sets no parameter: a small one keeps the initialising call cheap.
        _save_fresh(lambda: model_zoo.get_model('deeplab_resnest50_ade', pretrained_base=False,
                                                crop_size=64, base_size=64),
                    work / 'deeplab_resnest50_ade.params', (1, 3, 64, 64))
        if detector:
            _save_fresh(lambda: model_zoo.get_model('faster_rcnn_fpn_syncbn_resnest50_coco',
                                                    pretrained_base=False),
                        work / 'faster_rcnn_fpn_syncbn_resnest50_coco.params', (1, 3, 128, 128))


def _records(work: Path) -> None:
    import cv2
    import numpy as np

    from gluon_resnest.data.records import pack_image_record

    rng = np.random.default_rng(0)
    for name, count in (('train', 128), ('val', 4)):  # one training batch of 128
        writer = mx.recordio.MXIndexedRecordIO(str(work / f'{name}.idx'),
                                               str(work / f'{name}.rec'), 'w')
        for i in range(count):
            image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            jpeg = cv2.imencode('.jpg', image)[1].tobytes()
            writer.write_idx(i, pack_image_record(i, i % 10, jpeg))
        writer.close()


def _readme(work: Path) -> None:
    _resnest50_cache(work)
    _gluoncv_checkpoints(work, detector=False)


def _deployment(work: Path) -> None:
    _save_fresh(lambda: gluon_resnest.get_model('resnest50'), work / 'resnest50.params')


def _gluoncv(work: Path) -> None:
    _gluoncv_checkpoints(work, detector=True)


#: page -> (files it needs, prelude: the names its text leaves to the reader).
SETUP: dict[str, tuple[Callable[[Path], None] | None, str]] = {
    'README.md': (_readme, ''),
    'docs/data.md': (_records, '''
        import numpy as np
        import horovod.mxnet as hvd
        hvd.init()
        epochs, classes, rng = 1, 10, np.random.default_rng(0)
        '''),
    'docs/deployment.md': (_deployment, '''
        import mxnet as mx
        batch = mx.nd.random.uniform(shape=(16, 3, 224, 224))
        '''),
    'docs/gluoncv.md': (_gluoncv, ''),
    'docs/models.md': (_resnest50_cache, ''),
}

RUNNER = '''
import sys
namespace = {'__name__': '__main__'}
exec(compile(sys.argv[2], 'prelude', 'exec'), namespace)
page = sys.argv[1]
for i in range(3, len(sys.argv), 2):
    exec(compile(sys.argv[i + 1], f'{page} line {sys.argv[i]}', 'exec'), namespace)
'''


def run_page(page: str, work: Path) -> subprocess.CompletedProcess:
    files, prelude = SETUP.get(page, (None, ''))
    if files is not None:
        files(work)
    args = [sys.executable, '-c', RUNNER, page, textwrap.dedent(prelude)]
    for line, code, skip in python_blocks(page):
        if skip is None:
            args += [str(line), code]
    env = dict(os.environ, MXNET_HOME=str(work / 'mxnet_home'), MXNET_GLUON_REPO=CLOSED_URL,
               GLUON_RESNEST_REPO=CLOSED_URL, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
    env.pop('ENCODING_REPO', None)
    return subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=900)


PAGES_WITH_CODE = [page for page in PAGES if python_blocks(page)]


def test_every_block_compiles_and_no_test_markers_give_reasons():
    assert 'README.md' in PAGES_WITH_CODE and 'docs/gluoncv.md' in PAGES_WITH_CODE
    skipped = []
    for page in PAGES_WITH_CODE:
        for line, code, skip in python_blocks(page):
            compile(code, f'{page} line {line}', 'exec')
            if skip is not None:
                skipped.append((page, line, skip))
    assert len(skipped) <= 2, skipped  # sparingly


def test_block_parser_reads_markers(tmp_path, monkeypatch):
    page = tmp_path / 'page.md'
    page.write_text('text\n\n```python\nx = 1\n```\n<!-- no-test: needs a GPU -->\n'
                    '```python\nraise SystemExit(1)\n```\n```bash\nls\n```\n')
    monkeypatch.setattr(sys.modules[__name__], 'ROOT', tmp_path)
    assert python_blocks('page.md') == [(4, 'x = 1\n', None),
                                        (8, 'raise SystemExit(1)\n', 'needs a GPU')]


def test_a_failing_block_fails_the_page(tmp_path, monkeypatch):
    (tmp_path / 'docs').mkdir()
    (tmp_path / 'docs' / 'bad.md').write_text('```python\nx = 1\n```\n\n```python\n'
                                              'assert x == 2, "the second block"\n```\n')
    monkeypatch.setattr(sys.modules[__name__], 'ROOT', tmp_path)
    work = tmp_path / 'work'
    work.mkdir()
    result = run_page('docs/bad.md', work)
    assert result.returncode != 0
    assert 'docs/bad.md line 6' in result.stderr and 'the second block' in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize('page', PAGES_WITH_CODE)
def test_page_runs(page, tmp_path):
    result = run_page(page, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
