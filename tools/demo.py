"""End-to-end demo on this machine: digits -> RecordIO -> 2-worker Horovod training -> export
-> prediction with the exported files.

    python tools/demo.py [--workers 2] [--run-dir runs/demo] [--data-dir data/digits]

Every step is one of the project's own commands, printed before it runs, so the demo doubles as
a walk-through of the tools.
"""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from gluon_resnest.errors import ToolParser, int_in, run_tool

PROG = 'demo'
ROOT = Path(__file__).resolve().parents[1]
EXPECTED_TOP1 = 0.97


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    print(f'\n$ {shlex.join(cmd)}', flush=True)
    result = subprocess.run(cmd, cwd=ROOT, **kwargs)
    if result.returncode != 0:
        sys.exit(f'demo step failed with exit code {result.returncode}: {shlex.join(cmd)}')
    return result


def _main(argv: list[str] | None = None) -> int:
    parser = ToolParser(PROG, description=__doc__.split('\n\n')[0])
    parser.add_argument('--workers', type=int_in(1, 64), default=2,
                        help='Horovod processes (CPU, Gloo)')
    parser.add_argument('--data-dir', default='data/digits', help='where the packed data goes')
    parser.add_argument('--run-dir', default='runs/demo', help='training run directory')
    parser.add_argument('--recipe', default='digits', help='training recipe')
    parser.add_argument('--images', type=int_in(0, 10**4), default=5,
                        help='validation images to predict')
    args = parser.parse_args(argv)
    py = sys.executable
    data_dir, run_dir = ROOT / args.data_dir, ROOT / args.run_dir
    tic = time.time()

    images = data_dir / 'images'
    run([py, 'tools/make_digits.py', '--out', str(images)])
    for split in ('train', 'val'):
        run([py, 'tools/pack_rec.py', '--root', str(images / split),
             '--prefix', str(data_dir / split), '--workers', '2'])

    if run_dir.exists():
        shutil.rmtree(run_dir)
    horovodrun = shutil.which('horovodrun', path=str(Path(py).parent)) or 'horovodrun'
    train = [py, 'recipes/train.py', '--recipe', args.recipe, '--data-dir', str(data_dir),
             '--run-dir', str(run_dir)]
    if args.workers > 1:
        train = [horovodrun, '-np', str(args.workers), '-H', f'localhost:{args.workers}',
                 '--gloo', *train]
    run(train)

    records = [json.loads(line) for line in (run_dir / 'metrics.jsonl').read_text().splitlines()]
    top1 = records[-1]['val_top1']
    samples = sorted(p for p in (images / 'val').rglob('*.png'))[:: 50][:args.images]
    export = run_dir / 'export' / 'model'
    run([py, 'tools/predict.py', '--prefix', str(export), '--classes',
         f'{export}.classes', *map(str, samples)])
    minutes = (time.time() - tic) / 60
    print(f'\nfinal validation top-1: {100 * top1:.2f}% after {len(records)} epochs '
          f'({minutes:.1f} min in all); curves: {run_dir / "curves.png"}')
    if top1 < EXPECTED_TOP1:
        print(f'below the expected {100 * EXPECTED_TOP1:.0f}%', file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the demo; bad input ends with one line on stderr and status 2."""
    return run_tool(PROG, _main, argv)


if __name__ == '__main__':
    sys.exit(main())
