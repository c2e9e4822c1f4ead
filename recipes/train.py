"""Train a ResNeSt with a paper recipe, on one worker or many with ``horovodrun``.

    python recipes/train.py --recipe resnest50 --print-config
    horovodrun -np 8 -H host1:4,host2:4 python recipes/train.py --recipe resnest50 \\
        --data-dir /data/imagenet-rec --run-dir runs/resnest50

The data directory holds the recipe's ``train_rec`` and ``val_rec`` (``.rec`` + ``.idx``, as
written by ``tools/pack_rec.py``). Rank 0 writes into the run directory: ``config.json``,
``metrics.jsonl`` (one object per epoch), ``curves.png``, ``checkpoints/epoch-NNNN/`` (atomic)
and, at the end, ``export/`` (symbol/params). ``--resume`` continues from the newest complete
checkpoint; the run directory must then be visible to every worker.
"""
from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import hashlib
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

try:
    import gluon_resnest  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger('gluon_resnest.train')

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3


class TrainingError(RuntimeError):
    """A failure that ends the run with a clear message and a given exit code."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    from gluon_resnest.training.recipe import Recipe, recipe_names

    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--recipe', required=True,
                        help=f'recipe name ({", ".join(recipe_names())}) or a YAML file')
    parser.add_argument('--data-dir', help='folder with the recipe\'s train_rec and val_rec')
    parser.add_argument('--run-dir', help='output folder (config, metrics, checkpoints, export)')
    parser.add_argument('--print-config', action='store_true',
                        help='print the resolved configuration as JSON and exit')
    parser.add_argument('--resume', action='store_true',
                        help='continue from the newest complete checkpoint in --run-dir')
    parser.add_argument('--keep-checkpoints', type=int, default=2,
                        help='how many of the newest checkpoints to keep')
    parser.add_argument('--no-export', action='store_true',
                        help='skip the symbol/params export at the end')
    group = parser.add_argument_group(
        'recipe overrides', 'each replaces the recipe\'s value (lists as JSON, e.g. [0.5,1])')
    for f in dataclasses.fields(Recipe):
        group.add_argument('--' + f.name.replace('_', '-'), dest=f'set_{f.name}',
                           default=argparse.SUPPRESS, metavar='VALUE',
                           help=f'override {f.name}')
    group.add_argument('--per-worker-batch-size', dest='per_worker_batch_size', type=int,
                       default=argparse.SUPPRESS,
                       help='set global_batch_size to this times the number of workers')
    return parser


def resolve_config(args: argparse.Namespace, world_size: int) -> dict[str, Any]:
    from gluon_resnest.training.recipe import load_recipe, make_recipe, resolve

    recipe = load_recipe(args.recipe)
    values = dataclasses.asdict(recipe)
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith('set_')}
    if 'per_worker_batch_size' in vars(args):
        overrides['global_batch_size'] = args.per_worker_batch_size * world_size
    values.update(overrides)
    recipe = make_recipe(values, source=f'recipe {args.recipe!r} with command-line overrides')
    config = resolve(recipe, world_size)
    config['recipe'] = args.recipe
    return config


def check_data(config: dict[str, Any], data_dir: str | None) -> tuple[Path, Path]:
    if not data_dir:
        raise TrainingError('--data-dir is required to train')
    root = Path(data_dir)
    if not root.is_dir():
        raise TrainingError(f'data directory {str(root)!r} does not exist')
    paths = []
    for key in ('train_rec', 'val_rec'):
        rec = root / config[key]
        idx = rec.with_suffix('.idx')
        if not rec.is_file():
            raise TrainingError(f'{key}: {str(rec)!r} not found (pack it with tools/pack_rec.py)')
        if not idx.is_file():
            raise TrainingError(f'{key}: index {str(idx)!r} not found next to {rec.name}; '
                                f'the loaders need the .idx written by tools/pack_rec.py')
        paths.append(rec)
    return paths[0], paths[1]


def seed_everything(seed: int) -> None:
    import mxnet as mx
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    mx.random.seed(seed % 2**31)


def params_digest(net) -> str:
    """SHA-256 over every parameter's bytes, in name order (equal across ranks iff in sync)."""
    digest = hashlib.sha256()
    for name, param in sorted(net._collect_params_with_prefix().items()):
        digest.update(name.encode())
        digest.update(param.data().asnumpy().tobytes())
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.print_config:
        try:
            config = resolve_config(args, _launch_from_env()[1])
        except ValueError as err:
            print(f'error: {err}', file=sys.stderr)
            return EXIT_BAD_INPUT
        print(json.dumps(config))
        return 0
    try:
        return train(args)
    except (TrainingError, ValueError, FileNotFoundError) as err:
        logger.error('%s', err)
        print(f'error: {err}', file=sys.stderr)
        return getattr(err, 'code', EXIT_BAD_INPUT)


# (rank, size) variables of the launchers Horovod runs under: horovodrun (Gloo), Open MPI,
# MPICH/Intel MPI. A process started by none of them is taken for a single worker.
_LAUNCH_ENV = (('HOROVOD_RANK', 'HOROVOD_SIZE'), ('OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_SIZE'),
               ('PMI_RANK', 'PMI_SIZE'))


def _launch_from_env() -> tuple[int, int]:
    """``(rank, size)`` of this process, read before Horovod starts."""
    for rank_key, size_key in _LAUNCH_ENV:
        if os.environ.get(size_key):
            return int(os.environ.get(rank_key) or 0), int(os.environ[size_key])
    return 0, 1


def train(args: argparse.Namespace) -> int:
    import horovod.mxnet as hvd
    import mxnet as mx
    import numpy as np
    from mxnet import autograd, gluon

    from gluon_resnest import get_model, set_drop_prob
    from gluon_resnest.data import TrainLoader, ValLoader, allreduce_sum, mixup, smooth_one_hot
    from gluon_resnest.evaluation import evaluate
    from gluon_resnest.layers import HorovodSyncBatchNorm
    from gluon_resnest.training import (
        checkpoint,
        dropblock_prob,
        latest_checkpoint,
        learning_rate,
        load_checkpoint,
    )
    from gluon_resnest.training.metrics import (
        append_metrics,
        plot_curves,
        read_metrics,
        truncate_metrics,
    )

    # A crash in native code then also prints the Python stack of every thread.
    faulthandler.enable(all_threads=True)

    # The decoding workers are forked before hvd.init(): forking a process in which Horovod's
    # background thread runs (and talks to MXNet's engine) can crash it, so the loaders are
    # built and started first, with the rank and size the launcher put in the environment.
    rank, size = _launch_from_env()

    def configure_logging(rank: int) -> None:
        logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, force=True,
                            format=f'%(asctime)s [rank {rank}] %(levelname)s %(message)s')

    configure_logging(rank)
    config = resolve_config(args, size)
    train_rec, val_rec = check_data(config, args.data_dir)
    if not args.run_dir:
        raise TrainingError('--run-dir is required to train')
    mean, std = tuple(config['mean']), tuple(config['std'])

    def make_loaders(config: dict[str, Any], rank: int, size: int,
                     mp_context: str | None = None):
        batch = config['per_worker_batch_size']
        train_loader = TrainLoader(
            str(train_rec), batch, input_size=config['train_crop'], rank=rank, world_size=size,
            seed=config['seed'], num_workers=config['num_workers'],
            crop_scale=tuple(config['crop_scale']), crop_ratio=tuple(config['crop_ratio']),
            hflip=config['hflip'], color_jitter=config['color_jitter'],
            pca_noise=config['pca_noise'], auto_augment=config['auto_augment'], mean=mean,
            std=std, mp_context=mp_context)
        val_loader = ValLoader(str(val_rec), batch, eval_crop=config['eval_crop'], rank=rank,
                               world_size=size, num_workers=config['num_workers'], mean=mean,
                               std=std, mp_context=mp_context)
        train_loader.start()
        val_loader.start()
        return train_loader, val_loader

    train_loader, val_loader = make_loaders(config, rank, size)

    hvd.init()
    if (hvd.rank(), hvd.size()) != (rank, size):
        # A launcher whose environment we do not read: rebuild the loaders for the real rank,
        # with workers started by a fork server (a clean process, safe with Horovod running).
        logger.warning('the launcher environment says rank %d of %d, Horovod says rank %d of '
                       '%d: restarting the data workers for the latter', rank, size, hvd.rank(),
                       hvd.size())
        train_loader.close()
        val_loader.close()
        rank, size = hvd.rank(), hvd.size()
        configure_logging(rank)
        config = resolve_config(args, size)
        train_loader, val_loader = make_loaders(config, rank, size, mp_context='forkserver')
    run_dir = Path(args.run_dir)
    ckpt_dir = run_dir / 'checkpoints'
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / 'config.json').write_text(json.dumps(config, indent=2) + '\n')
        logger.info('resolved configuration:\n%s', json.dumps(config, indent=2))
        logger.info('data: %s (%d records, %d per worker), %s (%d records); %d decoding '
                    'workers per rank', train_rec, train_loader.num_records,
                    train_loader.num_samples, val_rec, val_loader.num_records,
                    config['num_workers'])

    gpus = mx.context.num_gpus()
    ctx = mx.gpu(hvd.local_rank()) if gpus > 0 else mx.cpu()
    if config['amp'] and gpus == 0:
        raise TrainingError('amp (float16) needs a GPU; none is visible')
    if config['amp']:
        from mxnet.contrib import amp
        amp.init()

    seed_everything(config['seed'])
    def build(**kwargs):
        return get_model(config['model'], classes=config['classes'],
                         last_gamma=config['last_gamma'], final_drop=config['final_drop'],
                         **config['model_kwargs'], **kwargs)

    # Synchronised BatchNorm takes batch statistics over all workers (training only; the
    # evaluation copy below uses plain BatchNorm, whose parameters have the same names).
    sync = {'norm_layer': HorovodSyncBatchNorm} if config['sync_bn'] else {}
    net = build(dropblock_prob=config['dropblock_prob'], **sync)
    net.initialize(mx.init.Xavier(), ctx=ctx)
    # Validation and export run on a second instance that receives a copy of the weights:
    # oneDNN reorders weights in place for inference, and training on from reordered arrays
    # changes the last bits of later updates, so that ranks drift apart and a resumed run
    # would not repeat an uninterrupted one.
    eval_net = build()
    eval_net.initialize(ctx=ctx)
    eval_net.hybridize(static_alloc=True, static_shape=True)
    params = net.collect_params()
    # Weight decay on convolution and FC weights only (paper §4.2): not on BN and biases.
    for name, param in params.items():
        if not name.endswith('weight'):
            param.wd_mult = 0.0
    hvd.broadcast_parameters(params, root_rank=0)

    # At least 1: the loader refuses a shard that cannot fill one batch (a ValueError).
    steps = len(train_loader)

    trainer = hvd.DistributedTrainer(params, config['optimizer'], {
        'learning_rate': 0.0, 'momentum': config['momentum'], 'wd': config['weight_decay']})
    if config['amp']:
        amp.init_trainer(trainer)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss(sparse_label=False)
    net.hybridize(static_alloc=True, static_shape=True)

    start_epoch = 0
    if args.resume:
        latest = latest_checkpoint(ckpt_dir)
        found = hvd.broadcast_object(str(latest) if latest else '', root_rank=0)
        if found:
            meta = load_checkpoint(found, net, trainer, ctx=ctx)
            start_epoch = meta['epoch'] + 1
            logger.info('resumed from %s; continuing at epoch %d', found, start_epoch + 1)
        else:
            logger.info('no checkpoint in %s; starting from scratch', ckpt_dir)
    if rank == 0:
        metrics_path = run_dir / 'metrics.jsonl'
        if start_epoch:
            truncate_metrics(metrics_path, start_epoch)
        else:
            metrics_path.unlink(missing_ok=True)

    epochs, lr0 = config['epochs'], config['lr']
    # This rank's shard of the first epoch it trains, for checking that shards are disjoint.
    (run_dir / 'workers').mkdir(parents=True, exist_ok=True)
    (run_dir / 'workers' / f'rank-{rank}.shard.json').write_text(json.dumps({
        'rank': rank, 'world_size': size, 'epoch': start_epoch,
        'num_records': train_loader.num_records,
        'indices': train_loader.indices(start_epoch)}) + '\n')
    for epoch in range(start_epoch, epochs):
        # Every epoch starts from seeds derived from (seed, epoch, rank), so a resumed run draws
        # the same random numbers as an uninterrupted one.
        seed_everything(config['seed'] * 100003 + epoch * 1009 + rank)
        train_loader.set_epoch(epoch)
        if config['dropblock_prob'] > 0:
            set_drop_prob(net, dropblock_prob(epoch, epochs, config['dropblock_prob']))
        loss_sum, seen, tic = 0.0, 0, time.time()
        bar = _progress(steps, f'epoch {epoch + 1}/{epochs}', rank)
        for step, (data, label) in enumerate(train_loader):
            lr = learning_rate(epoch * steps + step, steps, lr0, epochs, config['warmup_epochs'])
            trainer.set_learning_rate(lr)
            data = data.as_in_context(ctx)
            target = smooth_one_hot(label, config['classes'],
                                    config['label_smoothing']).as_in_context(ctx)
            if config['mixup_alpha'] > 0:
                data, target = mixup(data, target, config['mixup_alpha'], np.random)
            with autograd.record():
                loss = loss_fn(net(data), target)
                if config['amp']:
                    with amp.scale_loss(loss, trainer) as scaled:
                        autograd.backward(scaled)
                else:
                    loss.backward()
            trainer.step(data.shape[0])
            value = float(loss.mean().asscalar())
            if not math.isfinite(value):
                last = latest_checkpoint(ckpt_dir)
                raise TrainingError(
                    f'the training loss became {value} at epoch {epoch + 1}, step {step + 1} '
                    f'(lr {lr:.4g}); stopping. The last good checkpoint is '
                    f'{str(last) if last else "none (no epoch finished)"}; lower the learning '
                    f'rate and --resume from it.', EXIT_DIVERGED)
            loss_sum += value * data.shape[0]
            seen += data.shape[0]
            if bar is not None:
                bar.set_postfix(loss=f'{value:.3f}', lr=f'{lr:.3g}')
                bar.update()
        if bar is not None:
            bar.close()
        elapsed = time.time() - tic
        _sync_norm_statistics(net, hvd, mx)
        totals = allreduce_sum(np.array([loss_sum, seen]))
        record = {'epoch': epoch, 'train_loss': totals[0] / totals[1], 'lr': lr,
                  'img_per_sec': totals[1] / elapsed, 'val_top1': None, 'val_top5': None,
                  'dropblock_prob': dropblock_prob(epoch, epochs, config['dropblock_prob'])}
        if (epoch + 1) % config['val_interval'] == 0 or epoch + 1 == epochs:
            _copy_parameters(net, eval_net)
            result = evaluate(eval_net, val_loader, ctx=ctx, allreduce=allreduce_sum,
                              progress=rank == 0, total=len(val_loader))
            record.update(val_top1=result['top1'], val_top5=result['top5'])
        if rank == 0:
            append_metrics(run_dir / 'metrics.jsonl', record)
            plot_curves(read_metrics(run_dir / 'metrics.jsonl'), run_dir / 'curves.png')
            checkpoint.save_checkpoint(ckpt_dir, epoch, net, trainer,
                                       extra={'record': record}, keep=args.keep_checkpoints)
            logger.info('epoch %d: %s', epoch + 1, json.dumps(record))
    if train_loader.skipped:
        logger.warning('%d corrupt training records were skipped: %s',
                       len(train_loader.skipped), train_loader.skipped[:10])

    digest = params_digest(net)
    (run_dir / 'workers').mkdir(parents=True, exist_ok=True)
    (run_dir / 'workers' / f'rank-{rank}.params.sha256').write_text(digest + '\n')
    if rank == 0 and not args.no_export:
        from gluon_resnest.deploy import export_network

        export_dir = run_dir / 'export'
        export_dir.mkdir(parents=True, exist_ok=True)
        _copy_parameters(net, eval_net)
        files = export_network(eval_net, str(export_dir / 'model'), input_size=config['eval_crop'],
                               classes=config['classes'], mean=mean, std=std)
        classes_file = train_rec.with_suffix('.classes')
        if classes_file.is_file():
            shutil.copy(classes_file, export_dir / 'model.classes')
        logger.info('exported %s', ', '.join(str(f) for f in files))
    hvd.allreduce(mx.nd.zeros(1), name='done').wait_to_read()  # every rank finishes together
    return 0


def _copy_parameters(source, target) -> None:
    """Copy every parameter (and BatchNorm statistic) of ``source`` into ``target``."""
    own = target._collect_params_with_prefix()
    for name, param in source._collect_params_with_prefix().items():
        own[name].set_data(param.data())


def _sync_norm_statistics(net, hvd, mx) -> None:
    """Average BatchNorm running statistics over workers so every rank holds the same model."""
    if hvd.size() == 1:
        return
    for name, param in sorted(net.collect_params().items()):
        if name.endswith(('running_mean', 'running_var')):
            data = param.data()
            param.set_data(hvd.allreduce(data, average=True, name=name))


def _progress(total: int, desc: str, rank: int):
    if rank != 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


if __name__ == '__main__':
    sys.exit(main())
