"""Pack an export (FP32 or INT8) into an MXNet Model Server archive (``.mar``).

    python tools/archive_mms.py --prefix runs/demo/export/model --output model_store/digits.mar
    python tools/serve_mms.py model_store/digits.mar

The archive holds the export's symbol, parameters, meta file and class names, and names
``gluon_resnest.deploy.serving:handle`` as its handler: requests are decoded and transformed
exactly as ``tools/predict.py`` does and answered with the top-5 classes as JSON. The model's
name in ``/predictions/NAME`` is the archive's file name without ``.mar`` (or ``--name``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from gluon_resnest import native
from gluon_resnest.atomic import CHECKSUM_KEY, FileSet, checksums
from gluon_resnest.deploy import check_export, export_paths, load_class_names, read_meta
from gluon_resnest.deploy.meta import verify_export
from gluon_resnest.deploy.serving import ARCHIVE_PREFIX, HANDLER
from gluon_resnest.errors import ToolParser, int_in, run_tool

PROG = 'archive_mms'

#: Model names MMS accepts.
NAME_PATTERN = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_\-.]*$')


def stage_export(prefix: str, epoch: int, classes: str | None, folder: str) -> dict:
    """Copy an export into ``folder`` under :data:`ARCHIVE_PREFIX`; return the meta written.

    The export is verified against its meta file's checksums first, and the staged meta file
    records the checksums of the staged copies.
    """
    symbol_file, params_file = check_export(prefix, epoch)
    meta = read_meta(prefix)
    verify_export(prefix, epoch, meta)
    if classes is None and meta.get('class_names'):
        classes = os.path.join(os.path.dirname(prefix), meta['class_names'])
    elif classes is None and os.path.isfile(f'{prefix}.classes'):
        classes = f'{prefix}.classes'
    target = os.path.join(folder, ARCHIVE_PREFIX)
    symbol_out, params_out, meta_out = export_paths(target)
    shutil.copyfile(symbol_file, symbol_out)
    shutil.copyfile(params_file, params_out)
    meta.update(epoch=0, class_names=None)
    meta.pop('input_names', None)
    staged = [symbol_out, params_out]
    if classes:
        names = load_class_names(classes)
        if meta.get('classes') and len(names) != int(meta['classes']):
            raise ValueError(f'{len(names)} class names for {meta["classes"]} outputs '
                             f'({classes})')
        with open(f'{target}.classes', 'w', encoding='utf-8') as handle:
            handle.write('\n'.join(names) + '\n')
        meta['class_names'] = f'{ARCHIVE_PREFIX}.classes'
        staged.append(f'{target}.classes')
    meta[CHECKSUM_KEY] = checksums(staged)
    with open(meta_out, 'w', encoding='utf-8') as handle:
        json.dump(meta, handle, indent=2, sort_keys=True)
        handle.write('\n')
    return meta


def _native_operators_loadable(prefix: str, epoch: int) -> list[str]:
    """The gluon_resnest native operators the export calls, after checking that this Python
    (the one the model server runs the handler in) loads them: a failure is reported now, not
    at the server's first request."""
    with open(check_export(prefix, epoch)[0], encoding='utf-8') as handle:
        operators = native.operators_in(handle.read())
    if operators:
        try:
            native.load(required=True)
        except native.NativeBuildError as err:
            raise ValueError(f"{prefix} calls gluon_resnest's native operators "
                             f"({', '.join(operators)}), which the model server's Python cannot "
                             f'load: {err} (an export without --fast/--native needs nothing but '
                             'MXNet)') from None
    return operators


def _main(argv: list[str] | None = None) -> int:
    parser = ToolParser(PROG, description=__doc__.split('\n\n')[0])
    parser.add_argument('--prefix', required=True,
                        help='prefix of an export (tools/export.py or tools/quantize.py)')
    parser.add_argument('--epoch', type=int_in(0, 9999), default=0, help='epoch of the export')
    parser.add_argument('--classes', help='file with one class name per line '
                                          '(default: the export\'s own, when it has one)')
    parser.add_argument('--output', required=True, help='archive to write, NAME.mar')
    parser.add_argument('--name', help='model name in /predictions/NAME (default: NAME)')
    parser.add_argument('--force', action='store_true', help='overwrite an existing archive')
    args = parser.parse_args(argv)

    output = os.path.abspath(args.output)
    stem, ext = os.path.splitext(os.path.basename(output))
    name = args.name or stem
    if ext != '.mar':
        raise ValueError(f'the archive name must end in .mar ({args.output})')
    if not NAME_PATTERN.match(name):
        raise ValueError(f'model name {name!r} may only hold letters, digits, _, - and . '
                         f'and must start with a letter or digit')
    if os.path.exists(output) and not args.force:
        raise ValueError(f'archive exists, use --force to overwrite it ({args.output})')
    check_export(args.prefix, args.epoch)  # a bad export is named before anything else
    operators = _native_operators_loadable(args.prefix, args.epoch)
    read_meta(args.prefix)
    try:
        import model_archiver  # noqa: F401
    except ImportError:
        raise ValueError('model-archiver is not installed in this Python (make serve-env)'
                         ) from None
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix='mar-') as tmp:
        stage = os.path.join(tmp, 'model')
        os.makedirs(stage)
        meta = stage_export(args.prefix, args.epoch, args.classes, stage)
        packed = os.path.join(tmp, f'{name}.mar')
        # model-archiver names its output after the model; it is moved into place whole,
        # so a failed run never leaves half an archive.
        result = subprocess.run(
            [sys.executable, '-m', 'model_archiver.model_packaging', '--model-name', name,
             '--model-path', stage, '--handler', HANDLER, '--export-path', tmp],
            capture_output=True, text=True)
        if result.returncode != 0 or not os.path.isfile(packed):
            raise RuntimeError(f'model-archiver failed:\n{result.stderr.strip()}')
        # The archive is copied next to its final name and renamed: a failed copy (a full
        # disk, a signal) leaves an existing archive as it was.
        with FileSet(stale=[output]) as files:
            files.run(output, lambda path: shutil.copyfile(packed, path))
            files.commit()
    kind = 'INT8' if meta.get('quantized') else 'FP32'
    print(f'wrote {args.output} ({kind} {meta.get("model") or "export"}, '
          f'{meta["input_size"]}x{meta["input_size"]} input, model name {name!r})')
    if operators:
        print(f"note: the archive calls gluon_resnest's native operators ({', '.join(operators)})"
              ': the server needs gluon_resnest and its native libraries, as here')
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the tool; bad input ends with one line on stderr and status 2."""
    return run_tool(PROG, _main, argv)
