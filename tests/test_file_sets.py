"""File sets appear whole or not at all; checksums prove it; readers refuse what is not whole.

Exports (plain, INT8, ONNX, model server archives) and packed data sets are written under
temporary names and renamed into place as a set, the meta file last. These tests fill a real
file system (a tmpfs mounted by the test, which needs root), make one read-only, stop writers
with SIGTERM, damage files byte by byte, and check that the previous set is intact, that no
temporary is left, and that every reader refuses a damaged or incomplete set with one line.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from PIL import Image
from tools_cli import ROOT, load_tool

from gluon_resnest import get_model
from gluon_resnest.atomic import FileSet, sha256_of
from gluon_resnest.deploy import export_network, load_exported, write_meta

SIZE = 32


@contextlib.contextmanager
def tmpfs(size: str):
    """A fresh tmpfs of ``size`` (e.g. ``'40m'``) mounted on a temporary folder."""
    if os.geteuid() != 0:
        pytest.skip('mounting a tmpfs needs root')
    folder = tempfile.mkdtemp(prefix='tmpfs_')
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', folder],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        os.rmdir(folder)
        pytest.skip(f'cannot mount a tmpfs here: {mounted.stderr.strip()}')
    try:
        yield Path(folder)
    finally:
        subprocess.run(['umount', '-l', folder], check=True)
        os.rmdir(folder)


def read_only(folder: Path) -> None:
    """Remount the tmpfs at ``folder`` read-only."""
    subprocess.run(['mount', '-o', 'remount,ro', str(folder)], check=True)


def contents(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (relative name -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob('*')) if p.is_file()}


def one_error_line(err: str, tool: str) -> str:
    assert 'Traceback' not in err, err
    lines = [line for line in err.splitlines() if ': error: ' in line]
    assert len(lines) == 1 and lines[0].startswith(f'{tool}: error: '), err
    return lines[0]


@pytest.fixture(scope='module')
def params(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp('params')
    net = get_model('resnest14', classes=3)
    net.initialize(mx.init.Xavier())
    net.save_parameters(str(folder / 'net.params'))
    return folder / 'net.params'


@pytest.fixture(scope='module')
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp('image') / 'x.png'
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (40, 40, 3), np.uint8)).save(path)
    return path


def _export(params: Path, prefix: Path, *extra: str) -> int:
    return load_tool('export').main(['--model', 'resnest14', '--params', str(params),
                                     '--input-size', str(SIZE), '--prefix', str(prefix),
                                     *extra])


def test_file_set_commits_all_or_nothing(tmp_path: Path):
    (tmp_path / 'a').write_text('old a')
    with pytest.raises(RuntimeError), FileSet() as files:
        files.write_text(tmp_path / 'a', 'new a')
        files.write_text(tmp_path / 'b', 'new b')
        raise RuntimeError('writer failed')
    assert contents(tmp_path) == {'a': b'old a'}
    with FileSet() as files:
        files.write_text(tmp_path / 'a', 'new a')
        files.write_json(tmp_path / 'meta.json', {'sha256': files.checksums()})
        files.commit()
    assert json.loads((tmp_path / 'meta.json').read_text()) == {
        'sha256': {'a': sha256_of(tmp_path / 'a')}}
    assert sorted(contents(tmp_path)) == ['a', 'meta.json']


def test_export_onto_a_full_disk_keeps_the_previous_export(params: Path, capsys):
    with tmpfs('48m') as disk:
        prefix = disk / 'm'
        assert _export(params, prefix) == 0
        before = contents(disk)
        capsys.readouterr()
        assert _export(params, prefix, '--preprocess') == 2  # no room for a second copy
        line = one_error_line(capsys.readouterr().err, 'export')
        assert 'No space left on device' in line and str(disk) in line
        assert contents(disk) == before  # the previous export, whole; no temporaries
        load_exported(str(prefix))


def test_export_onto_a_read_only_file_system(params: Path, capsys):
    with tmpfs('8m') as disk:
        read_only(disk)
        assert _export(params, disk / 'm') == 2
        assert 'Read-only file system' in one_error_line(capsys.readouterr().err, 'export')


@pytest.fixture(scope='module')
def tiny(tmp_path_factory) -> Path:
    """A small export with class names, made once."""
    folder = tmp_path_factory.mktemp('tiny')
    net = get_model('resnest14', classes=3, stem_width=8)
    net.initialize(mx.init.Xavier())
    export_network(net, str(folder / 'm'), input_size=SIZE, classes=['a', 'b', 'c'])
    return folder


def _tiny_export(folder: Path, tiny: Path) -> str:
    for path in tiny.iterdir():
        shutil.copy(path, folder / path.name)
    return str(folder / 'm')


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(b ^ 0xFF for b in data[middle:middle + 4096])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize('damage', ['params', 'symbol', 'classes', 'no meta'])
def test_readers_refuse_a_damaged_or_incomplete_export(tmp_path: Path, image: Path, tiny: Path,
                                                       damage, capsys):
    """predict, evaluate and the server verify an export against its meta file."""
    from gluon_resnest.deploy.serving import ImageClassifier
    from gluon_resnest.errors import InputError

    prefix = _tiny_export(tmp_path, tiny)
    target = {'params': f'{prefix}-0000.params', 'symbol': f'{prefix}-symbol.json',
              'classes': f'{prefix}.classes', 'no meta': f'{prefix}-meta.json'}[damage]
    if damage == 'no meta':
        os.unlink(target)  # e.g. an export interrupted before its meta file
    elif damage == 'symbol':
        Path(target).write_text(Path(target).read_text() + ' ')  # still a valid symbol
    elif damage == 'classes':
        Path(target).write_text('a\nb\nz\n')
    else:
        _flip_middle(Path(target))
    expect = 'no meta file' if damage == 'no meta' else 'does not match the SHA-256'
    assert load_tool('predict').main(['--prefix', prefix, str(image)]) == 2
    line = one_error_line(capsys.readouterr().err, 'predict')
    assert expect in line and target in line
    with pytest.raises(InputError, match=expect):
        ImageClassifier(prefix)


def test_exports_without_checksums_still_load(tmp_path: Path, tiny: Path, caplog):
    prefix = _tiny_export(tmp_path, tiny)
    meta_file = Path(f'{prefix}-meta.json')
    meta = json.loads(meta_file.read_text())
    del meta['sha256']
    meta_file.write_text(json.dumps(meta))
    load_exported(prefix)
    assert 'records no checksums' in caplog.text
    # A bare HybridBlock.export becomes a checked export with write_meta.
    net = get_model('resnest14', classes=3, stem_width=8)
    net.initialize()
    net.hybridize()
    net(mx.nd.zeros((1, 3, SIZE, SIZE)))
    bare = str(tmp_path / 'bare')
    net.export(bare)
    with pytest.raises(ValueError, match='no meta file'):
        load_exported(bare)
    write_meta(bare, input_size=SIZE)
    assert set(json.loads(Path(f'{bare}-meta.json').read_text())['sha256']) == {
        'bare-symbol.json', 'bare-0000.params'}
    load_exported(bare)


def _packable(folder: Path, count: int = 6, size: int = 40) -> Path:
    rng = np.random.RandomState(0)
    for i in range(count):
        path = folder / f'c{i % 2}' / f'{i}.png'
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.randint(0, 255, (size, size, 3), np.uint8)).save(path)
    return folder


def test_pack_onto_a_full_disk_names_the_file_and_leaves_nothing(tmp_path: Path, capsys):
    images = _packable(tmp_path / 'images', count=8, size=300)  # ~60 KB per JPEG
    with tmpfs('700k') as disk:
        pack = load_tool('pack_rec')
        small = _packable(tmp_path / 'small', count=2)
        assert pack.main(['--root', str(small), '--prefix', str(disk / 'd'),
                          '--no-progress', '--workers', '1']) == 0
        before = contents(disk)
        capsys.readouterr()
        assert pack.main(['--root', str(images), '--prefix', str(disk / 'd'), '--quality',
                          '100', '--no-progress', '--workers', '1']) == 2
        line = one_error_line(capsys.readouterr().err, 'pack_rec')
        assert 'No space left on device' in line and str(disk / 'd.') in line
        assert contents(disk) == before


@pytest.mark.slow
def test_sigterm_during_an_export_keeps_the_previous_set(params: Path, tmp_path: Path):
    prefix = tmp_path / 'm'
    assert _export(params, prefix) == 0
    before = contents(tmp_path)
    # Stop a second export as a scheduler would, while it writes its parameters.
    proc = subprocess.Popen([sys.executable, 'tools/export.py', '--model', 'resnest14',
                             '--params', str(params), '--input-size', str(SIZE),
                             '--preprocess', '--prefix', str(prefix)],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    staging = tmp_path / f'm.tmp{proc.pid}-symbol.json'
    deadline = time.time() + 120
    while not staging.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, err
    assert contents(tmp_path) == before


def _fake_context():
    class Context:  # the two calls of MMS's context the handler makes per request
        def __init__(self):
            self.status = {}

        def set_response_content_type(self, idx, kind):
            pass

        def set_response_status(self, code, phrase, idx=0):
            self.status[idx] = code

    return Context()


def _bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A small PNG whose header claims ``width x height`` pixels."""
    buf = io.BytesIO()
    Image.new('L', (16, 16)).save(buf, format='PNG')
    data = bytearray(buf.getvalue())
    import struct
    import zlib

    ihdr = data[12:29]
    ihdr[4:12] = struct.pack('>II', width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack('>I', zlib.crc32(bytes(ihdr)))
    return bytes(data)


def test_one_bomb_in_a_served_batch_fails_only_its_request(tmp_path: Path, image: Path,
                                                            tiny: Path):
    from gluon_resnest.deploy import serving

    prefix = _tiny_export(tmp_path, tiny)
    serving._service = serving.ImageClassifier(prefix)  # noqa: SLF001 - as handle(None) does
    context = _fake_context()
    good = image.read_bytes()
    replies = serving.handle([{'body': good}, {'body': _bomb_png()}, {'body': good}], context)
    assert context.status == {1: 400}
    assert 'more than 89478485 pixels' in json.loads(replies[1])['message']
    assert json.loads(replies[0]) == json.loads(replies[2]) and len(json.loads(replies[0])) == 3


def test_predict_reports_a_bomb_and_goes_on(tmp_path: Path, image: Path, tiny: Path, capsys):
    prefix = _tiny_export(tmp_path, tiny)
    bomb = tmp_path / 'bomb.png'
    bomb.write_bytes(_bomb_png())
    assert load_tool('predict').main(['--prefix', prefix, '--json', str(bomb), str(image)]) == 1
    captured = capsys.readouterr()
    assert 'Traceback' not in captured.err and str(bomb) in captured.err
    assert list(json.loads(captured.out)) == [str(image)]


def test_a_fifo_is_skipped_not_waited_on(tmp_path: Path):
    from gluon_resnest.data.pack import pack_folder, read_image

    images = _packable(tmp_path / 'images', count=2)
    os.mkfifo(images / 'c0' / 'pipe.png')

    def timeout(signum, frame):
        raise TimeoutError('packing waited on the FIFO')

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(60)
    try:
        result = pack_folder(str(images), str(tmp_path / 'p'), progress=False)
        with pytest.raises(ValueError, match='not a regular file'):
            read_image(str(images / 'c0' / 'pipe.png'))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert result.packed == 2
    assert dict(result.skipped)['c0/pipe.png'].startswith('not a regular file')


@pytest.mark.parametrize('label, message', [
    ('16777217', 'not a class index of at most 1000000 classes'),
    ('100000000', 'not a class index of at most 1000000 classes'),
    ('1e300', 'does not fit in a float32'),
])
def test_labels_are_stored_exactly_or_refused(tmp_path: Path, label: str, message: str,
                                              capsys):
    _packable(tmp_path, count=1)
    lst = tmp_path / 'in.lst'
    lst.write_text(f'0\t{label}\tc0/0.png\n')

    def timeout(signum, frame):
        raise TimeoutError('packing hung')

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(60)
    try:
        code = load_tool('pack_rec').main(['--lst', str(lst), '--prefix', str(tmp_path / 'o'),
                                           '--no-progress', '--workers', '1'])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert code == 2
    line = one_error_line(capsys.readouterr().err, 'pack_rec')
    assert message in line and str(lst) in line
    assert not list(tmp_path.glob('o.*'))


def test_labels_up_to_the_class_bound_round_trip(tmp_path: Path):
    from gluon_resnest.data import RecordFile
    from gluon_resnest.data.pack import ListEntry, pack_entries

    _packable(tmp_path, count=1)
    entries = [ListEntry(0, (999999.0,), 'c0/0.png'), ListEntry(1, (3.0, 0.1, 1e30), 'c0/0.png')]
    pack_entries(entries, str(tmp_path), str(tmp_path / 'o'), progress=False)
    labels, readable = RecordFile(str(tmp_path / 'o.rec')).labels()
    assert readable.all() and labels.tolist() == [999999.0, 3.0]
    assert (tmp_path / 'o.classes').read_text().count('\n') == 1000000


def test_control_characters_in_names(tmp_path: Path):
    from gluon_resnest.data.pack import pack_folder, read_lst
    from gluon_resnest.errors import InputError

    images = _packable(tmp_path / 'images', count=4)
    shutil.copy(images / 'c0' / '0.png', images / 'c0' / 'new\nline.png')
    shutil.copy(images / 'c0' / '0.png', images / 'c1' / 'tab\there.png')
    (images / 'c1' / 'sub\rfolder').mkdir()
    shutil.copy(images / 'c0' / '0.png', images / 'c1' / 'sub\rfolder' / 'x.png')
    result = pack_folder(str(images), str(tmp_path / 'p'), progress=False)
    assert result.packed == 4
    assert sorted(dict(result.skipped)) == ['c0/new\nline.png', 'c1/sub\rfolder',
                                            'c1/tab\there.png']
    assert len(read_lst(str(tmp_path / 'p.lst'))) == 4
    assert (tmp_path / 'p.lst').read_text().count('\n') == 4
    assert (tmp_path / 'p.classes').read_text() == 'c0\nc1\n'
    skipped = (tmp_path / 'p.skipped.txt').read_text().splitlines()
    assert len(skipped) == 3 and 'c0/new\\nline.png\t' in skipped[0]
    (images / 'bad\nclass').mkdir()
    with pytest.raises(InputError, match="class folder 'bad\\\\\\\\nclass' holds a control"):
        pack_folder(str(images), str(tmp_path / 'q'), progress=False)
    lst = tmp_path / 'ff.lst'
    lst.write_text('0\t0\tc0/0.png\x0c\n1\t1\tc1/1.png\n')  # str.splitlines breaks at \x0c
    with pytest.raises(InputError, match='entry 1 .*control character'):
        from gluon_resnest.data.pack import pack_entries

        pack_entries(read_lst(str(lst)), str(images), str(tmp_path / 'r'), progress=False)


# The sweep: every writer of a file set, interrupted at many points by a full disk and by
# SIGTERM, leaves either the previous set, byte for byte, or (a signal after the renames) the
# whole new one; never a mix, never a temporary.

def _fill_to(disk: Path, free: int) -> None:
    """Leave about ``free`` bytes free on ``disk`` (a ballast file takes the rest)."""
    ballast = disk / 'ballast'
    if ballast.exists():
        ballast.unlink()
    stats = os.statvfs(disk)
    take = stats.f_bavail * stats.f_frsize - free
    if take > 0:
        with open(ballast, 'wb') as handle:
            os.posix_fallocate(handle.fileno(), 0, take)


def _sets(disk: Path) -> dict[str, bytes]:
    return {k: v for k, v in contents(disk).items() if k != 'ballast'}


@pytest.fixture(scope='module')
def writers(tmp_path_factory, params: Path):
    """Each writer: (name, argv builder (output folder -> argv), files it writes)."""
    work = tmp_path_factory.mktemp('writers')
    images = _packable(work / 'images', count=8, size=64)
    load_tool('pack_rec').main(['--root', str(images), '--prefix', str(work / 'calib'),
                                '--no-progress', '--workers', '1'])
    net = get_model('resnest14', classes=3, stem_width=8)
    net.initialize(mx.init.Xavier())
    (work / 'ckpt').mkdir()
    net.save_parameters(str(work / 'ckpt' / 'model.params'))
    (work / 'ckpt' / 'model.json').write_text(json.dumps(
        {'model': 'resnest14', 'classes': 3, 'model_kwargs': {'stem_width': 8}}))
    source = work / 'fp32' / 'm'
    assert _export(work / 'ckpt' / 'model.params', source) == 0
    tools = {
        'export': lambda out: ['export', '--model', 'resnest14', '--params',
                               str(work / 'ckpt' / 'model.params'), '--input-size', str(SIZE),
                               '--prefix', str(out / 'm')],
        'quantize': lambda out: ['quantize', '--prefix', str(source), '--calib-rec',
                                 str(work / 'calib.rec'), '--output', str(out / 'q'),
                                 '--num-calib-examples', '8', '--batch-size', '4',
                                 '--num-workers', '0'],
        'pack_rec': lambda out: ['pack_rec', '--root', str(images), '--prefix', str(out / 'd'),
                                 '--no-progress', '--workers', '1', '--quality', '90'],
    }
    try:
        import onnx  # noqa: F401
        tools['export_onnx'] = lambda out: ['export_onnx', '--prefix', str(source), '--output',
                                            str(out / 'm.onnx')]
    except ImportError:
        pass
    return tools


def _run_in_process(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = load_tool(argv[0]).main(argv[1:])
    return code, err.getvalue()


def _second_version(argv: list[str]) -> list[str]:
    """The same writer asked for different contents (so the new set differs from the old)."""
    tool = argv[0]
    if tool == 'export':
        return [*argv, '--preprocess']
    if tool == 'quantize':
        return [*argv, '--num-calib-examples', '4']
    if tool == 'pack_rec':
        return [*argv[:-1], '100']  # larger files than the previous set's
    return [*argv, '--input-size', str(SIZE * 2)]


@pytest.mark.slow
def test_disk_full_sweep_keeps_every_previous_set(writers):
    with tmpfs('200m') as disk:
        for name, make in writers.items():
            out = disk / name
            out.mkdir()
            argv = make(out)
            assert _run_in_process(argv)[0] == 0, name
            before = _sets(disk)
            new_size = sum(len(v) for k, v in before.items() if k.startswith(name + '/'))
            outcomes = set()
            for fraction in (0.0, 0.1, 0.5, 0.95):
                _fill_to(disk, int(new_size * fraction))
                code, err = _run_in_process(_second_version(argv))
                assert code == 2, (name, fraction, err)
                line = one_error_line(err, name)
                assert 'No space left on device' in line and str(out) in line, line
                assert _sets(disk) == before, (name, fraction)
                outcomes.add(line.rsplit('(', 1)[-1])
            (disk / 'ballast').unlink(missing_ok=True)
            assert outcomes, name


def _terminate_when(proc: subprocess.Popen, folder: Path, delay: float) -> None:
    """SIGTERM ``delay`` seconds after the first temporary file appears in ``folder``."""
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if any('.tmp' in p.name for p in folder.iterdir()):
            time.sleep(delay)
            break
        time.sleep(0.001)
    proc.send_signal(signal.SIGTERM)


@pytest.mark.slow
def test_sigterm_sweep_leaves_the_previous_or_the_whole_new_set(writers, tmp_path: Path):
    for name, make in writers.items():
        out = tmp_path / name
        out.mkdir()
        argv = make(out)
        assert _run_in_process(argv)[0] == 0, name
        before = contents(out)
        kept = 0
        for delay in (0.0, 0.005, 0.05, 0.5):
            proc = subprocess.Popen([sys.executable, f'tools/{name}.py',
                                     *_second_version(argv)[1:]],
                                    cwd=ROOT, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
            _terminate_when(proc, out, delay)
            _, err = proc.communicate(timeout=300)
            assert 'Traceback' not in err, (name, delay, err)
            after = contents(out)
            assert not [k for k in after if '.tmp' in k], (name, delay, sorted(after))
            kept += after == before
            if after != before:  # the signal came after the renames: the whole new set
                assert sorted(after) == sorted(before), (name, delay, sorted(after))
                if name in ('export', 'quantize'):  # its checksums match: one whole set
                    load_exported(str(out / ('m' if name == 'export' else 'q')))
                elif name == 'pack_rec':
                    from gluon_resnest.data import RecordFile

                    assert len(RecordFile(str(out / 'd.rec'))) == len(
                        (out / 'd.lst').read_text().splitlines())
                before = after
            assert proc.returncode in (0, 128 + signal.SIGTERM, -signal.SIGTERM), (
                name, delay, proc.returncode, err)
        assert kept, f'{name}: no signal arrived while the set was being written'


def test_tools_verify_a_checkpoints_parameters(tmp_path: Path, image: Path, capsys):
    """predict --model --params RUN/checkpoints/epoch-N/model.params checks its checksum."""
    from gluon_resnest.training.checkpoint import save_checkpoint

    net = get_model('resnest14', classes=3, stem_width=8)
    net.initialize(mx.init.Xavier())
    trainer = mx.gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})
    folder = save_checkpoint(tmp_path / 'checkpoints', 0, net, trainer, model_spec={
        'model': 'resnest14', 'classes': 3, 'model_kwargs': {'stem_width': 8}})
    argv = ['--model', 'resnest14', '--params', str(folder / 'model.params'), '--input-size',
            str(SIZE), str(image)]
    assert load_tool('predict').main(argv) == 0
    _flip_middle(folder / 'model.params')
    capsys.readouterr()
    assert load_tool('predict').main(argv) == 2
    line = one_error_line(capsys.readouterr().err, 'predict')
    assert 'does not match the SHA-256 recorded in meta.json' in line


@pytest.mark.parametrize('fmt', ['TIFF', 'BMP', 'PNG'])
def test_fuzzed_headers_are_unreadable_images_never_crashes(fmt: str):
    """Random bytes in the first 64 bytes of a real file: either it decodes, or ValueError."""
    from gluon_resnest.data.pack import image_pixels

    buf = io.BytesIO()
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (24, 20, 3), np.uint8)).save(
        buf, format=fmt)
    good = buf.getvalue()
    rng = np.random.RandomState(1)
    outcomes = {'decoded': 0, 'refused': 0}
    for _ in range(100):
        data = bytearray(good)
        for pos in rng.randint(0, min(64, len(data)), 3):
            data[pos] = rng.randint(0, 256)
        try:
            pixels = image_pixels(bytes(data))
        except ValueError:
            outcomes['refused'] += 1
            continue
        assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
        outcomes['decoded'] += 1
    assert outcomes['refused'] > 0
