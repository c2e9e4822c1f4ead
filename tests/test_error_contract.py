"""Every tool and the trainer, fed bad input, end the same way.

The contract: exit status 2, exactly one line ``tool: error: <what> (<file>)`` on stderr naming
the offending file or option, no traceback, and nothing left behind (no output files, no
temporaries, no ``/dev/shm`` segments). The matrix crosses every file argument with missing,
empty, random-bytes and wrong-type (a folder) inputs, every numeric option with out-of-range
values, and parameters of a wrong architecture.

The fast matrix calls each tool's ``main(argv)`` in this process (what a subprocess would run,
minus interpreter start-up); the ``slow`` one runs three cases of every tool as real
subprocesses, which also proves that nothing is printed after the error line and that no native
crash happens.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from PIL import Image
from tools_cli import ROOT, load_tool

from gluon_resnest import get_model
from gluon_resnest.data.pack import pack_folder
from gluon_resnest.data.records import pack_image_record
from gluon_resnest.deploy import export_network


@pytest.fixture(scope='module')
def bad(tmp_path_factory) -> dict[str, Path]:
    """Good inputs to combine with one bad one, and the bad inputs themselves."""
    root = tmp_path_factory.mktemp('contract')
    rng = np.random.RandomState(0)
    for label in range(3):
        folder = root / 'images' / f'c{label}'
        folder.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.randint(0, 256, (40, 40, 3), np.uint8)).save(folder / f'{i}.png')
    pack_folder(str(root / 'images'), str(root / 'data' / 'val'), progress=False)
    pack_folder(str(root / 'images'), str(root / 'data' / 'train'), progress=False)
    net = get_model('resnest14', classes=3)
    net.initialize()
    net.save_parameters(str(root / 'net.params'))
    export_network(net, str(root / 'export' / 'net'), input_size=32)
    other = get_model('resnetd50', classes=3)
    other.initialize()
    other.save_parameters(str(root / 'other.params'))
    (root / 'empty').write_bytes(b'')
    (root / 'random').write_bytes(rng.bytes(4096))
    (root / 'folder').mkdir()
    # A .rec of random bytes with a plausible index, and a .rec whose .idx is another's.
    (root / 'noise.rec').write_bytes(rng.bytes(8192))
    (root / 'noise.idx').write_text(''.join(f'{i}\t{i * 512}\n' for i in range(16)))
    (root / 'mixed.rec').write_bytes((root / 'data' / 'val.rec').read_bytes()[:3000])
    (root / 'mixed.idx').write_text(''.join(f'{i}\t{i * 97 + 5}\n' for i in range(9)))
    # Valid records whose images are noise.
    writer = mx.recordio.MXIndexedRecordIO(str(root / 'junk.idx'), str(root / 'junk.rec'), 'w')
    for key in range(8):
        writer.write_idx(key, pack_image_record(0.0, key, rng.bytes(700)))
    writer.close()
    (root / 'noidx.rec').write_bytes((root / 'data' / 'val.rec').read_bytes())
    (root / 'empty.rec').write_bytes(b'')
    (root / 'empty.idx').write_bytes(b'')
    (root / 'random.yaml').write_bytes(rng.bytes(300))
    (root / 'list.yaml').write_text('- 1\n- 2\n')
    (root / 'garbage_export-symbol.json').write_bytes(rng.bytes(500))
    (root / 'garbage_export-0000.params').write_bytes(rng.bytes(500))
    (root / 'wrong_arch-symbol.json').write_bytes((root / 'export' / 'net-symbol.json')
                                                  .read_bytes())
    (root / 'wrong_arch-0000.params').write_bytes((root / 'other.params').read_bytes())
    labels20 = root / 'labels20'
    (labels20 / 'images').mkdir(parents=True)
    for label in range(20):
        (labels20 / 'images' / f'k{label:02d}').mkdir()
        Image.fromarray(rng.randint(0, 256, (40, 40, 3), np.uint8)).save(
            labels20 / 'images' / f'k{label:02d}' / 'x.png')
    pack_folder(str(labels20 / 'images'), str(root / 'data20' / 'val'), progress=False)
    pack_folder(str(labels20 / 'images'), str(root / 'data20' / 'train'), progress=False)
    # Training data whose validation file is noise; a run directory that holds a run.
    (root / 'data_noise').mkdir()
    for suffix in ('rec', 'idx'):
        (root / 'data_noise' / f'train.{suffix}').write_bytes(
            (root / 'data' / f'train.{suffix}').read_bytes())
        (root / 'data_noise' / f'val.{suffix}').write_bytes((root / f'noise.{suffix}')
                                                           .read_bytes())
    (root / 'data_junk').mkdir()
    for suffix in ('rec', 'idx'):
        (root / 'data_junk' / f'train.{suffix}').write_bytes(
            (root / 'data' / f'train.{suffix}').read_bytes())
        (root / 'data_junk' / f'val.{suffix}').write_bytes((root / f'junk.{suffix}').read_bytes())
    (root / 'used_run').mkdir()
    (root / 'used_run' / 'run.json').write_text('{"run_id": "0123"}')
    (root / 'used_run' / 'config.json').write_text('{"model": "resnetd50"}')
    # Exports a reader must refuse: no meta file, impossible meta values, a file that does not
    # match its checksum; exports ONNX cannot take (--fast, INT8).
    def export_copy(name: str, **meta_changes) -> None:
        for suffix in ('-symbol.json', '-0000.params', '-meta.json'):
            (root / f'{name}{suffix}').write_bytes(
                (root / 'export' / f'net{suffix}').read_bytes())
        meta = json.loads((root / f'{name}-meta.json').read_text())
        meta.update(meta_changes)
        (root / f'{name}-meta.json').write_text(json.dumps(meta))

    export_copy('nometa_export')
    (root / 'nometa_export-meta.json').unlink()
    export_copy('badmean_export', mean='abc')
    export_copy('nullsize_export', input_size=None)
    export_copy('size1_export', input_size=1)
    export_copy('fast_export', fast=True)
    export_copy('int8_export', quantized=True)
    export_copy('edited_export')
    with open(root / 'edited_export-symbol.json', 'a') as handle:
        handle.write(' ')
    export_copy('reshaped_export', sha256={})  # an older export: no checksums to compare
    symbol = (root / 'reshaped_export-symbol.json').read_text()
    (root / 'reshaped_export-symbol.json').write_text(
        symbol.replace('"kernel": "(3, 3)"', '"kernel": "(5, 5)"', 1))
    # An index of another file, and data folders whose train.idx belongs to another .rec or
    # whose train.rec lost its second half.
    (root / 'foreign.rec').write_bytes((root / 'data' / 'val.rec').read_bytes())
    (root / 'foreign.idx').write_bytes((root / 'data20' / 'val.idx').read_bytes())
    for name, rec, idx in (('data_foreign', (root / 'data' / 'train.rec').read_bytes(),
                            (root / 'data20' / 'val.idx').read_bytes()),
                           ('data_truncated', (root / 'data' / 'train.rec').read_bytes(),
                            (root / 'data' / 'train.idx').read_bytes())):
        (root / name).mkdir()
        (root / name / 'train.rec').write_bytes(rec[:len(rec) // 2] if 'trunc' in name else rec)
        (root / name / 'train.idx').write_bytes(idx)
        for suffix in ('rec', 'idx'):
            (root / name / f'val.{suffix}').write_bytes(
                (root / 'data' / f'val.{suffix}').read_bytes())
    # Parameters whose model.json names the class count as a word.
    (root / 'badspec').mkdir()
    (root / 'badspec' / 'model.params').write_bytes((root / 'net.params').read_bytes())
    (root / 'badspec' / 'model.json').write_text(
        '{"model": "resnest14", "classes": "ten", "model_kwargs": {}}')
    # A run directory whose run.json names a run that none of its checkpoints carries.
    from gluon_resnest.training.cli import build_parser, options_from_args
    from gluon_resnest.training.options import resolve_config

    orphan = root / 'orphan_run'
    args = build_parser().parse_args([_fill(a, root, orphan) for a in TRAIN])
    (orphan / 'checkpoints' / 'epoch-0000').mkdir(parents=True)
    (orphan / 'checkpoints' / 'epoch-0000' / 'meta.json').write_text(
        '{"epoch": 0, "run_id": "4567"}')
    (orphan / 'run.json').write_text('{"run_id": "0123"}')
    (orphan / 'config.json').write_text(json.dumps(resolve_config(options_from_args(args), 1)))
    return {'root': root}


# Every case: tool, arguments ({name} = a file of the fixture folder, {out} = a fresh output
# path), and what the error line must contain (a fixture name stands for its path).
def _at(name: str) -> str:
    return '{' + name + '}'


def _numbers(tool: str, option: str, base: list[str], values=('0', '-1', '100000', 'x')):
    return [(tool, [*base, option, v], option) for v in values]


EXPORT = ['--prefix', '{root}/export/net']
MODEL = ['--model', 'resnest14', '--params', '{net.params}']
FILES = ('missing', 'empty', 'random', 'folder')
SIZES = ('0', '-1', '7', '100000', 'x')

CASES: list[tuple[str, list[str], str]] = []
# pack_rec
CASES += [('pack_rec', ['--root', _at(f), '--prefix', '{out}'], _at(f))
          for f in ('missing', 'empty', 'random')]
CASES += [('pack_rec', ['--lst', _at(f), '--prefix', '{out}'], _at(f))
          for f in ('missing', 'random', 'folder')]
CASES += [('pack_rec', ['--root', '{root}/folder', '--prefix', '{out}'], '{folder}')]
CASES += [('pack_rec', ['--root', '{root}/images', '--prefix', '{random}/sub/out'], '{random}')]
CASES += _numbers('pack_rec', '--quality', ['--root', '{root}/images', '--prefix', '{out}'],
                  ('0', '101', 'x'))
CASES += _numbers('pack_rec', '--resize', ['--root', '{root}/images', '--prefix', '{out}'],
                  ('-1', '100000', 'x'))
CASES += _numbers('pack_rec', '--workers', ['--root', '{root}/images', '--prefix', '{out}'],
                  ('0', '-1', 'x'))
# predict
CASES += [('predict', ['--prefix', _at(f), '{root}/images/c0/0.png'], _at(f))
          for f in FILES]
CASES += [('predict', ['--prefix', '{root}/garbage_export', '{root}/images/c0/0.png'],
           'garbage_export')]
CASES += [('predict', ['--prefix', '{root}/wrong_arch', '{root}/images/c0/0.png'],
           'wrong_arch')]
CASES += [('predict', ['--model', 'resnest14', '--params', _at(f),
                       '{root}/images/c0/0.png'], _at(f)) for f in FILES]
CASES += [('predict', ['--model', 'resnest14', '--params', '{other.params}',
                       '{root}/images/c0/0.png'], '{other.params}')]
CASES += [('predict', ['--model', 'resnest15', '--params', '{net.params}',
                       '{root}/images/c0/0.png'], 'resnest15')]
CASES += [('predict', [*EXPORT, '--classes', _at(f), '{root}/images/c0/0.png'],
           _at(f)) for f in ('missing', 'folder', 'random')]
CASES += _numbers('predict', '--input-size', [*EXPORT, '{root}/images/c0/0.png'], SIZES)
CASES += _numbers('predict', '--top-k', [*EXPORT, '{root}/images/c0/0.png'], ('0', 'x'))
CASES += [('predict', ['--prefix', f'{{root}}/{f}_export', '{root}/images/c0/0.png'],
           f'{f}_export-{expect}') for f, expect in (
               ('nometa', 'meta.json'), ('badmean', 'meta.json'), ('nullsize', 'meta.json'),
               ('size1', 'meta.json'), ('edited', 'symbol.json'), ('reshaped', 'symbol.json'))]
CASES += [('predict', ['--model', 'resnest14', '--params', '{root}/badspec/model.params',
                       '{root}/images/c0/0.png'], 'badspec/model.json')]
# evaluate
CASES += [('evaluate', ['--prefix', f'{{root}}/{f}_export', '--rec', '{root}/data/val.rec'],
           f'{f}_export-{expect}') for f, expect in (
               ('nometa', 'meta.json'), ('nullsize', 'meta.json'), ('edited', 'symbol.json'))]
CASES += [('evaluate', [*EXPORT, '--rec', '{root}/foreign.rec'], 'foreign.rec, ')]
CASES += [('evaluate', [*EXPORT, '--rec', _at(f)], _at(f))
          for f in ('missing', 'random', 'folder')]
CASES += [('evaluate', [*EXPORT, '--rec', f'{{root}}/{f}.rec'], f + '.')
          for f in ('noise', 'mixed', 'noidx', 'empty', 'junk')]
CASES += [('evaluate', [*MODEL, '--rec', '{root}/data20/val.rec'], 'data20/val.rec')]
CASES += [('evaluate', [*EXPORT, '--rec', '{root}/data20/val.rec'], 'data20/val.rec')]
CASES += [('evaluate', ['--model', 'resnest14', '--params', _at(f), '--rec',
                        '{root}/data/val.rec'], _at(f)) for f in FILES]
CASES += [('evaluate', ['--model', 'resnest14', '--params', '{other.params}', '--rec',
                        '{root}/data/val.rec'], '{other.params}')]
CASES += _numbers('evaluate', '--eval-crop', [*EXPORT, '--rec', '{root}/data/val.rec'], SIZES)
CASES += _numbers('evaluate', '--batch-size', [*EXPORT, '--rec', '{root}/data/val.rec'])
CASES += _numbers('evaluate', '--num-workers', [*EXPORT, '--rec', '{root}/data/val.rec'],
                  ('-1', 'x'))
CASES += [('evaluate', [*EXPORT, '--rec', '{root}/data/val.rec', '--gpus', g], '--gpus')
          for g in ('0', 'x')]
# export
CASES += [('export', ['--model', 'resnest14', '--params', _at(f), '--prefix', '{out}'],
           _at(f)) for f in FILES]
CASES += [('export', ['--model', 'resnest14', '--params', '{other.params}', '--prefix',
                      '{out}'], '{other.params}')]
CASES += [('export', ['--model', 'resnest14', '--class-names', _at(f), '--prefix',
                      '{out}'], _at(f)) for f in ('missing', 'folder', 'random')]
CASES += _numbers('export', '--input-size', ['--model', 'resnest14', '--prefix', '{out}'],
                  SIZES)
CASES += _numbers('export', '--classes', ['--model', 'resnest14', '--prefix', '{out}'],
                  ('0', '-1', 'x'))
CASES += [('export', ['--model', 'resnest14', '--prefix', '{root}/folder/'], '{folder}')]
# export_onnx
CASES += [('export_onnx', ['--prefix', _at(f), '--output', '{out}.onnx'], _at(f))
          for f in FILES]
CASES += [('export_onnx', ['--prefix', '{root}/garbage_export', '--output', '{out}.onnx'],
           'garbage_export')]
CASES += [('export_onnx', [*EXPORT, '--output', '{folder}'], '{folder}')]
CASES += _numbers('export_onnx', '--input-size', [*EXPORT, '--output', '{out}.onnx'], SIZES)
CASES += [('export_onnx', ['--prefix', f'{{root}}/{f}_export', '--output', '{out}.onnx'],
           f'{f}_export-{expect}') for f, expect in (
               ('fast', 'symbol.json'), ('int8', 'symbol.json'), ('nometa', 'meta.json'),
               ('edited', 'symbol.json'))]
# quantize
CASES += [('quantize', [*EXPORT, '--calib-rec', _at(f), '--output', '{out}'], _at(f))
          for f in ('missing', 'random', 'folder')]
CASES += [('quantize', [*EXPORT, '--calib-rec', f'{{root}}/{f}.rec', '--output', '{out}'],
           f + '.') for f in ('noise', 'noidx', 'empty', 'junk')]
CASES += [('quantize', ['--prefix', _at(f), '--calib-rec', '{root}/data/val.rec',
                        '--output', '{out}'], _at(f)) for f in FILES]
CASES += [('quantize', [*EXPORT, '--calib-rec', '{root}/data/val.rec', '--output',
                        '{root}/export/net'], 'is the FP32 export')]
CASES += [('quantize', [*EXPORT, '--calib-rec', '{root}/data/val.rec', '--output',
                        '{random}/sub/int8'], '{random}')]
CASES += [('quantize', ['--prefix', '{root}/nometa_export', '--calib-rec',
                        '{root}/data/val.rec', '--output', '{out}'], 'nometa_export-meta.json')]
CASES += _numbers('quantize', '--batch-size', [*EXPORT, '--calib-rec', '{root}/data/val.rec',
                                               '--output', '{out}'])
# convert_torch
CASES += [('convert_torch', ['--model', 'resnest14', '--input', _at(f), '--output',
                             '{out}.params'], _at(f)) for f in FILES]
CASES += _numbers('convert_torch', '--classes', ['--model', 'resnest14', '--input',
                                                 '{net.params}', '--output', '{out}'],
                  ('0', 'x'))
# complexity, benchmark, bench_data, make_digits, demo
CASES += [('complexity', ['--model', 'resnest15'], 'resnest15')]
CASES += _numbers('complexity', '--input-size', ['--model', 'resnest14'], ('7', '-1', 'x'))
CASES += _numbers('complexity', '--classes', ['--model', 'resnest14'], ('0', 'x'))
CASES += [('benchmark', ['--model', 'resnest15'], 'resnest15')]
CASES += _numbers('benchmark', '--input-size', ['--model', 'resnest14'], SIZES)
CASES += _numbers('benchmark', '--batch-size', ['--model', 'resnest14'])
CASES += [('bench_data', ['--rec', _at(f)], _at(f)) for f in FILES]
CASES += [('bench_data', ['--rec', f'{{root}}/{f}.rec'], f + '.')
          for f in ('noise', 'mixed', 'noidx', 'empty', 'junk')]
CASES += _numbers('bench_data', '--input-size', ['--rec', '{root}/data/val.rec'], SIZES)
CASES += _numbers('bench_data', '--batch-size', ['--rec', '{root}/data/val.rec'])
CASES += [('make_digits', ['--out', '{random}'], '{random}')]
CASES += _numbers('make_digits', '--size', ['--out', '{out}'], ('0', '-1', 'x'))
CASES += _numbers('make_digits', '--val-fraction', ['--out', '{out}'], ('0', '1', '2', 'x'))
CASES += _numbers('demo', '--workers', [], ('0', '-1', 'x'))
# archive_mms, serve_mms
CASES += [('archive_mms', ['--prefix', _at(f), '--output', '{out}.mar'], _at(f)) for f in FILES]
CASES += _numbers('archive_mms', '--epoch', [*EXPORT, '--output', '{out}.mar'], ('-1', 'x'))
CASES += [('serve_mms', [_at(f)], _at(f)) for f in ('missing', 'folder', 'list.yaml')]
CASES += [('archive_mms', ['--prefix', '{root}/nometa_export', '--output', '{out}.mar'],
           'nometa_export-meta.json')]
CASES += _numbers('serve_mms', '--port', ['{random}'], ('0', '-1', '100000', 'x'))
CASES += _numbers('serve_mms', '--batch-size', ['{random}'], ('0', '-1', 'x'))
CASES += _numbers('serve_mms', '--workers', ['{random}'], ('0', 'x'))

# The trainer: everything below fails before Horovod starts or any file is written.
TRAIN = ['--recipe', 'digits', '--global-batch-size', '4', '--data-dir', '{root}/data',
         '--run-dir', '{out}']
CASES += [('train', ['--recipe', _at(f), '--data-dir', '{root}/data', '--run-dir', '{out}'],
           f) for f in ('missing', 'random.yaml', 'list.yaml')]
CASES += [('train', ['--recipe', 'digits', '--data-dir', _at(f), '--run-dir', '{out}'],
           _at(f)) for f in ('missing', 'random', 'folder')]
CASES += [('train', ['--recipe', 'digits', '--global-batch-size', '4', '--data-dir',
                     f'{{root}}/data_{f}', '--run-dir', '{out}'], f'data_{f}/val.rec')
          for f in ('noise', 'junk')]
CASES += [('train', [*TRAIN, '--classes', '2'], 'data/train.rec')]
CASES += [('train', [*TRAIN[:-1], _at(f)], _at(f)) for f in ('random', 'used_run')]
CASES += [('train', [*TRAIN[:-1], '{used_run}', '--resume'], 'used_run/config.json')]
CASES += [('train', [*TRAIN, '--resume', '--overwrite'], '--overwrite')]
CASES += [('train', [*TRAIN[:-1], '{orphan_run}', '--resume'], 'orphan_run/run.json')]
CASES += [('train', [*TRAIN, option, value], option[2:].replace('-', '_'))
          for option in ('--train-crop', '--eval-crop') for value in SIZES]
CASES += [('train', [*TRAIN, option, value], option[2:].replace('-', '_'))
          for option in ('--epochs', '--global-batch-size', '--classes')
          for value in ('0', '-1', 'x')]
CASES += [('train', [*TRAIN, '--epochs', value], 'epochs') for value in ('.inf', '1.0e+400')]
CASES += [('train', ['--recipe', 'digits', '--global-batch-size', '4', '--data-dir',
                     f'{{root}}/{f}', '--run-dir', '{out}'], f'{f}/train.rec, ')
          for f in ('data_foreign', 'data_truncated')]
CASES += [('train', [*TRAIN, '--num-workers', '-1'], 'num_workers')]
CASES += _numbers('train', '--keep-checkpoints', TRAIN, ('0', '-1', 'x'))
CASES += _numbers('train', '--per-worker-batch-size', TRAIN, ('0', '-1', 'x'))
CASES += [('train', [*TRAIN, '--model-kwargs', value], 'model_kwargs')
          for value in ('{"stem_width": "x"}', '[1]', '{"no_such_arg": 1}', '{')]

def _fill(text: str, root: Path, out: Path) -> str:
    def sub(match):
        name = match.group(1)
        if name == 'root':
            return str(root)
        if name == 'out':
            return str(out)
        return str(root / name)
    return re.sub(r'\{([\w.]+)\}', sub, text)


def _orphaned_segments() -> set[str]:
    """Loader segments in /dev/shm of this process or of processes that no longer exist."""
    found = set()
    for name in os.listdir('/dev/shm') if os.path.isdir('/dev/shm') else []:
        pid = name[len('gluon_resnest_'):].split('_', 1)[0]
        if not (name.startswith('gluon_resnest_') and pid.isdigit()):
            continue
        try:
            alive = int(pid) != os.getpid()
            if alive:
                os.kill(int(pid), 0)
        except ProcessLookupError:
            alive = False
        if not alive:
            found.add(f'/dev/shm/{name}')
    return found


def _snapshot(root: Path) -> set[str]:
    return {str(p) for p in root.rglob('*')} | _orphaned_segments()


def check_contract(tool: str, stderr: str, code: int, expect: str, argv: list[str]) -> None:
    """Exit 2, one ``tool: error:`` line naming ``expect``, no traceback."""
    assert 'Traceback' not in stderr, stderr
    errors = [line for line in stderr.splitlines() if ': error: ' in line]
    assert code == 2, f'{tool} {argv}: exit {code}\n{stderr}'
    assert len(errors) == 1, f'{tool} {argv}: expected one error line\n{stderr}'
    assert errors[0].startswith(f'{tool}: error: '), errors[0]
    assert expect in errors[0], f'{expect!r} not named in {errors[0]!r}'


def _main_of(tool: str):
    if tool == 'train':
        from gluon_resnest.training.cli import main

        return main
    return load_tool(tool).main


def _case_id(case) -> str:
    tool, argv, _ = case
    return f'{tool}:' + ' '.join(a.replace('{', '').replace('}', '').replace('/', '.')
                                 for a in argv)


def _prepare(case, root: Path, tmp_path: Path):
    tool, argv, expect = case
    out = tmp_path / 'out'
    args = [_fill(a, root, out) for a in argv]
    return tool, args, _fill(expect, root, out).rstrip('/')


@pytest.mark.parametrize('case', CASES, ids=_case_id)
def test_bad_input_in_process(case, bad, tmp_path, capsys):
    tool, args, expect = _prepare(case, bad['root'], tmp_path)
    before = _snapshot(bad['root']) | _snapshot(tmp_path)
    try:
        code = _main_of(tool)(args)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    err = capsys.readouterr().err
    check_contract(tool, err, code, expect, args)
    assert _snapshot(bad['root']) | _snapshot(tmp_path) == before, 'something was left behind'


def _per_tool(cases, count: int) -> list:
    """The first ``count`` cases of every tool."""
    seen: dict[str, int] = {}
    chosen = []
    for case in cases:
        seen[case[0]] = seen.get(case[0], 0) + 1
        if seen[case[0]] <= count:
            chosen.append(case)
    return chosen


# As real processes, three cases of every tool: interpreter start-up makes the whole matrix
# cost minutes, and the in-process matrix above already runs every case through the same main.
@pytest.mark.slow
@pytest.mark.parametrize('case', _per_tool(CASES, 3), ids=_case_id)
def test_bad_input_as_subprocess(case, bad, tmp_path):
    tool, args, expect = _prepare(case, bad['root'], tmp_path)
    before = _snapshot(bad['root']) | _snapshot(tmp_path)
    script = ROOT / ('recipes/train.py' if tool == 'train' else f'tools/{tool}.py')
    proc = subprocess.run([sys.executable, str(script), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    check_contract(tool, proc.stderr, proc.returncode, expect, args)
    assert _snapshot(bad['root']) | _snapshot(tmp_path) == before, 'something was left behind'


def _sleep_after(ready) -> None:
    import time

    ready.set()
    time.sleep(60)


def _fork_and_terminate(argv) -> int:
    import multiprocessing as mp

    context = mp.get_context('fork')
    ready = context.Event()
    child = context.Process(target=_sleep_after, args=(ready,))
    child.start()
    assert ready.wait(60)
    child.terminate()
    child.join()
    return child.exitcode


def test_sigterm_unwinds_the_tool_but_kills_forked_helpers_outright():
    """Pool workers that unwound on SIGTERM could hang their pool's shutdown."""
    from gluon_resnest.errors import run_tool

    assert run_tool('probe', _fork_and_terminate, []) == -15  # killed by the signal itself


def test_error_line_format(capsys):
    from gluon_resnest.errors import InputError, run_tool

    def fail(argv):
        raise InputError('label 7 is outside 0..4', 'data/train.lst')

    assert run_tool('probe', fail, []) == 2
    assert capsys.readouterr().err == 'probe: error: label 7 is outside 0..4 (data/train.lst)\n'

    def bug(argv):
        raise KeyError('internal')

    with pytest.raises(KeyError):  # a bug keeps its traceback
        run_tool('probe', bug, [])


@pytest.mark.parametrize('env, named', [
    ({'HOROVOD_RANK': '1', 'HOROVOD_SIZE': '2'}, 'HOROVOD_RANK=1 and HOROVOD_SIZE=2'),
    ({'HOROVOD_RANK': '0', 'HOROVOD_SIZE': 'abc'}, "HOROVOD_SIZE='abc'"),
    ({'HOROVOD_RANK': '5', 'HOROVOD_SIZE': '2'}, 'HOROVOD_RANK=5'),
])
def test_horovod_variables_set_by_hand_fail_at_once(env, named, tmp_path, monkeypatch, capsys):
    """Outside horovodrun, Horovod would wait 30 s for the other workers and then abort."""
    import logging
    import time

    from gluon_resnest.training.cli import main

    logging.basicConfig(level=logging.WARNING, force=True)  # not a stream of an earlier test
    for key in ('HOROVOD_GLOO_RENDEZVOUS_ADDR', 'OMPI_COMM_WORLD_SIZE', 'PMI_SIZE'):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    start = time.monotonic()
    code = main(['--recipe', 'digits', '--data-dir', str(tmp_path), '--run-dir',
                 str(tmp_path / 'run')])
    check_contract('train', capsys.readouterr().err, code, named, [])
    assert time.monotonic() - start < 10
    assert not (tmp_path / 'run').exists()


def test_value_errors_name_the_argument():
    from gluon_resnest.deploy import fast_inference

    for classes in (10.5, 'ten', True):
        with pytest.raises(ValueError, match=f'classes must be a whole number above 0, got '
                                             f'{classes!r}'):
            get_model('resnest14', classes=classes)
    net = get_model('resnest14', classes=3)
    net.initialize()
    for data, named in ((np.zeros((1, 3, 64, 64), np.float32), 'data: .*NDArray'),
                        (mx.nd.zeros((1, 3, 7, 7)), 'data: images of 7x7 pixels'),
                        (mx.nd.array(np.zeros((0, 3, 64, 64), np.float32)),
                         'data: the sample batch is empty'),
                        (mx.nd.array([]), 'data: .*float32 batch of shape')):
        with pytest.raises(ValueError, match=named):
            fast_inference(net, data)
