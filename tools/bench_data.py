"""Images/second of the training input pipeline against mx.io.ImageRecordIter on the same file.

Both pipelines get the same job: decode, random-size crop (area 0.08-1, ratio 3/4-4/3), resize,
flip, colour jitter 0.4, PCA lighting 0.1, mean/std normalisation, float32 NCHW batches, with
``--workers`` decoding threads/processes. AutoAugment (``--auto-augment``) exists only in ours.

Examples:
    python tools/bench_data.py --rec data/train.rec --input-size 224 --batch-size 128 --workers 2
    python tools/bench_data.py --synthetic 3000 --workers 2 --auto-augment

``--synthetic N`` writes N photo-like 500x375 JPEGs into a temporary folder, packs them with
tools/pack_rec.py's code and benchmarks that file (deleted afterwards).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Callable, Dict, Iterator, List

import mxnet as mx

from gluon_resnest.constants import IMAGENET_MEAN, IMAGENET_STD
from gluon_resnest.data import TrainLoader
from gluon_resnest.data.loader import check_records
from gluon_resnest.data.pack import pack_folder
from gluon_resnest.data.records import RecordFile, idx_path_for
from gluon_resnest.data.synthetic import write_synthetic_folder
from gluon_resnest.errors import (
    InputError,
    ToolParser,
    image_size,
    int_in,
    missing,
    mxnet_reason,
    run_tool,
)

PROG = 'bench_data'
logger = logging.getLogger('bench_data')

MEAN, STD = IMAGENET_MEAN, IMAGENET_STD


def parse_args(argv=None) -> argparse.Namespace:
    parser = ToolParser(PROG, description=__doc__.split('\n')[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument('--rec', help='RecordIO file (its .idx beside it)')
    src.add_argument('--synthetic', type=int_in(1, 10**7), metavar='N',
                     help='benchmark N synthetic 500x375 JPEGs packed in a temporary folder')
    parser.add_argument('--input-size', type=image_size, default=224, help='training crop size')
    parser.add_argument('--batch-size', type=int_in(1, 65536), default=128, help='images per batch')
    parser.add_argument('--workers', type=int_in(1, 1024), default=2,
                        help='our worker processes = ImageRecordIter preprocess threads')
    parser.add_argument('--auto-augment', action='store_true',
                        help='also time our pipeline with the AutoAugment ImageNet policy')
    parser.add_argument('--batches', type=int_in(1, 10**6), default=12,
                        help='timed batches per pipeline')
    parser.add_argument('--warmup', type=int_in(0, 10**6), default=2, help='untimed batches first')
    parser.add_argument('--repeats', type=int_in(1, 1000), default=1,
                        help='measure every pipeline this many times (interleaved), keep the best')
    args = parser.parse_args(argv)
    return args


def _endless(make_epoch: Callable[[int], Iterator]) -> Iterator:
    epoch = 0
    while True:
        yield from make_epoch(epoch)
        epoch += 1


def time_batches(batches: Iterator, warmup: int, timed: int, batch_size: int) -> float:
    """Images/second over ``timed`` batches after ``warmup`` batches (data synchronised)."""
    for _ in range(warmup):
        next(batches)[0].wait_to_read()
    start = time.perf_counter()
    for _ in range(timed):
        next(batches)[0].wait_to_read()
    return timed * batch_size / (time.perf_counter() - start)


def record_iter_batches(rec: str, args: argparse.Namespace) -> Iterator:
    """Batches of mx.io.ImageRecordIter with the equivalent augmentations."""
    it = mx.io.ImageRecordIter(
        path_imgrec=rec, path_imgidx=idx_path_for(rec), data_shape=(3, args.input_size,
                                                                    args.input_size),
        batch_size=args.batch_size, shuffle=True, seed=0, preprocess_threads=args.workers,
        random_resized_crop=True, min_random_area=0.08, max_random_area=1.0,
        min_aspect_ratio=3 / 4, max_aspect_ratio=4 / 3, rand_mirror=True, brightness=0.4,
        contrast=0.4, saturation=0.4, pca_noise=0.1, inter_method=2 if args.input_size > 256
        else 1, mean_r=MEAN[0], mean_g=MEAN[1], mean_b=MEAN[2], std_r=STD[0], std_g=STD[1],
        std_b=STD[2])

    def epoch(_):
        it.reset()
        for batch in it:
            yield batch.data[0], batch.label[0]
    return _endless(epoch)


def loader_batches(loader: TrainLoader) -> Iterator:
    """Endless batches of our loader, one epoch after the other."""
    def epoch(e):
        loader.set_epoch(e)
        return iter(loader)
    return _endless(epoch)


def run(rec: str, args: argparse.Namespace) -> Dict[str, float]:
    """Measure every pipeline; returns name -> images/second."""
    records = RecordFile(rec)
    check_records(records)
    n = len(records)
    need = (args.warmup + args.batches) * args.batch_size
    if n < need:
        logger.warning('%s has %d records, fewer than the %d one timed run reads: epochs will '
                       'wrap inside the timing', rec, n, need)
    loaders = {'ours': TrainLoader(rec, args.batch_size, args.input_size, num_workers=args.workers,
                                   mean=MEAN, std=STD)}
    if args.auto_augment:
        loaders['ours + AutoAugment'] = TrainLoader(
            rec, args.batch_size, args.input_size, num_workers=args.workers, mean=MEAN, std=STD,
            auto_augment=True)
    results: Dict[str, List[float]] = {}
    for r in range(args.repeats):
        try:
            speed = time_batches(record_iter_batches(rec, args), args.warmup, args.batches,
                                 args.batch_size)
        except mx.base.MXNetError as err:
            raise InputError(f'mx.io.ImageRecordIter cannot read it: {mxnet_reason(err)}',
                             rec) from None
        results.setdefault('mx.io.ImageRecordIter', []).append(speed)
        logger.info('repeat %d: ImageRecordIter %.1f img/s', r, speed)
        for name, loader in loaders.items():
            speed = time_batches(loader_batches(loader), args.warmup, args.batches,
                                 args.batch_size)
            results.setdefault(name, []).append(speed)
            logger.info('repeat %d: %s %.1f img/s', r, name, speed)
    for loader in loaders.values():
        loader.close()
    return {name: max(values) for name, values in results.items()}


def _main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    tmp = None
    try:
        if args.synthetic:
            tmp = tempfile.mkdtemp(prefix='bench_data_')
            logger.info('writing %d synthetic 500x375 JPEGs to %s', args.synthetic, tmp)
            write_synthetic_folder(os.path.join(tmp, 'images'), args.synthetic,
                                   workers=os.cpu_count() or 1)
            result = pack_folder(os.path.join(tmp, 'images'), os.path.join(tmp, 'bench'),
                                 workers=os.cpu_count() or 1, progress=False)
            logger.info('%s', result.summary())
            rec = os.path.join(tmp, 'bench.rec')
        else:
            rec = args.rec
            for path in (rec, idx_path_for(rec)):
                if not os.path.isfile(path):
                    raise missing('no such file (the .rec needs its .idx beside it)', path)
        speeds = run(rec, args)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    base = speeds['mx.io.ImageRecordIter']
    print(f'\ninput {args.input_size}, batch {args.batch_size}, {args.workers} workers, '
          f'{os.cpu_count()} CPUs, best of {args.repeats}')
    print('| pipeline | images/s | vs ImageRecordIter |')
    print('|---|---|---|')
    for name, speed in speeds.items():
        print(f'| {name} | {speed:.1f} | {speed / base:.2f}x |')
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the tool; bad input ends with one line on stderr and status 2."""
    return run_tool(PROG, _main, argv)


if __name__ == '__main__':
    sys.exit(main())
