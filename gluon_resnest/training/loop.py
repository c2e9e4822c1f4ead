"""The training loop as named steps, run by :func:`train_model` on every Horovod worker.

1. :func:`start_workers`: the data loaders (their decoding workers forked before
   ``hvd.init()``), then Horovod;
2. :func:`build_model_and_trainer`: the network, its evaluation twin, the distributed trainer;
3. :func:`resume` from the newest checkpoint when asked;
4. per epoch :func:`train_epoch`, :func:`validate` when due, :func:`save_epoch` (rank 0);
5. :func:`finish`: export (rank 0) and a last barrier.
"""
from __future__ import annotations

import faulthandler
import functools
import json
import logging
import math
import random
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import horovod.mxnet as hvd
import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from .. import native
from ..data import TrainLoader, ValLoader, allreduce_sum, mixup, smooth_one_hot
from ..data.records import unpack_image_record
from ..data.transforms import decode_image
from ..errors import InputError, mxnet_reason
from ..evaluation import evaluate
from ..layers import DropBlock, HorovodSyncBatchNorm, set_drop_prob
from ..model_zoo import get_model
from ..models import KAIMING_FAN_IN
from ..params import copy_parameters, params_digest
from ..progress import progress
from .amp import check_amp, init_amp, loss_scaler_state, restore_loss_scaler
from .checkpoint import latest_checkpoint, load_checkpoint, resume_checkpoint, save_checkpoint
from .collectives import broadcast_object, broadcast_parameters, fenced
from .metrics import append_metrics, plot_curves, read_metrics, truncate_metrics
from .options import (
    EXIT_DIVERGED,
    RunOptions,
    TrainingError,
    check_data,
    configure_logging,
    launch_from_env,
    resolve_config,
)
from .plan import worker_device
from .rundir import RunLock, claim_run_dir, read_identity
from .schedule import dropblock_prob, iteration_lr

__all__ = ['Run', 'build_loaders', 'build_model_and_trainer', 'build_networks', 'finish',
           'resume', 'save_epoch', 'seed_everything', 'start_workers', 'train_epoch',
           'train_model', 'validate']

logger = logging.getLogger('gluon_resnest.train')


@dataclass
class Run:
    """What one worker holds during training; the steps below fill and use it."""

    options: RunOptions
    config: dict[str, Any]
    rank: int
    size: int
    train_rec: Path
    train_loader: TrainLoader
    val_loader: ValLoader
    val_rec: Path | None = None
    ctx: Any = None
    lock: RunLock | None = None
    identity: dict[str, Any] | None = None
    net: gluon.HybridBlock | None = None
    eval_net: gluon.HybridBlock | None = None
    trainer: gluon.Trainer | None = None
    loss_fn: gluon.loss.Loss | None = None
    start_epoch: int = 0

    @property
    def run_dir(self) -> Path:
        return Path(self.options.run_dir)

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / 'checkpoints'

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / 'metrics.jsonl'


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and MXNet's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    mx.random.seed(seed % 2**31)


def build_loaders(config: dict[str, Any], train_rec: Path, val_rec: Path, rank: int, size: int,
                  mp_context: str | None = None) -> tuple[TrainLoader, ValLoader]:
    """This rank's training and validation loaders, their workers started."""
    batch = config['per_worker_batch_size']
    mean, std = tuple(config['mean']), tuple(config['std'])
    train_loader = TrainLoader(
        str(train_rec), batch, input_size=config['train_crop'], rank=rank, world_size=size,
        seed=config['seed'], num_workers=config['num_workers'],
        crop_scale=tuple(config['crop_scale']), crop_ratio=tuple(config['crop_ratio']),
        hflip=config['hflip'], color_jitter=config['color_jitter'],
        pca_noise=config['pca_noise'], auto_augment=config['auto_augment'], mean=mean,
        std=std, mp_context=mp_context, num_classes=config['classes'])
    val_loader = ValLoader(str(val_rec), batch, eval_crop=config['eval_crop'], rank=rank,
                           world_size=size, num_workers=config['num_workers'], mean=mean,
                           std=std, mp_context=mp_context, num_classes=config['classes'])
    train_loader.start()
    val_loader.start()
    return train_loader, val_loader


def start_workers(options: RunOptions) -> Run:
    """Check the inputs, start the data loaders, then Horovod.

    The decoding workers are forked before ``hvd.init()``: forking a process in which
    Horovod's background thread runs (and talks to MXNet's engine) can crash it, so the loaders
    are built and started first, with the rank and size the launcher put in the environment.
    """
    if options.elastic:
        # Workers join while Horovod runs in the others, and a reset changes the shards: the
        # data workers are always started by a fork server, after Horovod.
        hvd.init()
        rank, size, mp_context = hvd.rank(), hvd.size(), 'forkserver'
    else:
        (rank, size), mp_context = launch_from_env(), None
    configure_logging(rank)
    config = resolve_config(options, size)
    train_rec, val_rec = check_data(config, options.data_dir)
    if not options.run_dir:
        raise TrainingError('--run-dir is required to train')
    _check_model(config)
    # Everything that can be checked before the first epoch is: labels against the class
    # count, a readable validation set, a writable run directory that no other run uses.
    train_loader, val_loader = build_loaders(config, train_rec, val_rec, rank, size,
                                             mp_context=mp_context)
    lock = identity = None
    try:
        _check_decodable(val_loader)
        if rank == 0:
            lock, identity = claim_run_dir(options.run_dir, config, options.resume,
                                           options.overwrite)
    except BaseException:
        train_loader.close()
        val_loader.close()
        raise

    if not options.elastic:
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
        config = resolve_config(options, size)
        train_loader, val_loader = build_loaders(config, train_rec, val_rec, rank, size,
                                                 mp_context='forkserver')
        if rank == 0 and lock is None:
            lock, identity = claim_run_dir(options.run_dir, config, options.resume,
                                           options.overwrite)
        elif rank != 0 and lock is not None:
            lock.release()
            lock = identity = None
    run = Run(options, config, rank, size, train_rec, train_loader, val_loader, val_rec,
              lock=lock, identity=identity)
    if rank == 0:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        (run.run_dir / 'config.json').write_text(json.dumps(config, indent=2) + '\n')
        logger.info('resolved configuration:\n%s', json.dumps(config, indent=2))
        logger.info('data: %s (%d records, %d per worker), %s (%d records); %d decoding '
                    'workers per rank', train_rec, train_loader.num_records,
                    train_loader.num_samples, val_rec, val_loader.num_records,
                    config['num_workers'])
    return run


def _check_model(config: dict[str, Any]) -> None:
    """Build the network once (no weights) to refuse bad ``model_kwargs`` before any work."""
    try:
        get_model(config['model'], classes=config['classes'], **config['model_kwargs'])
    except (TypeError, ValueError, mx.base.MXNetError) as err:
        reason = mxnet_reason(err) if isinstance(err, mx.base.MXNetError) else err
        raise InputError(f'model_kwargs {config["model_kwargs"]} do not fit '
                         f'{config["model"]}: {reason}') from None


def _check_decodable(loader: ValLoader, sample: int = 8) -> None:
    """Refuse a validation file none of whose first images decodes (found up front)."""
    records = loader.records
    reasons = []
    for pos in range(min(sample, len(records))):
        try:
            decode_image(unpack_image_record(records.read(pos))[1])
            return
        except ValueError as err:
            reasons.append(str(getattr(err, 'reason', err)))
    raise InputError(f'none of its first {len(reasons)} images can be decoded '
                     f'({reasons[0]})', records.rec_path)


def model_spec(config: dict[str, Any]) -> dict[str, Any]:
    """What rebuilds the trained network (written into every checkpoint as model.json)."""
    return {'model': config['model'], 'classes': config['classes'],
            'model_kwargs': dict(config['model_kwargs'])}


def build_networks(config: dict[str, Any], ctx: Any, native_ops: bool = False
                   ) -> tuple[gluon.HybridBlock, gluon.HybridBlock]:
    """The training network, initialised for training from scratch, and its evaluation twin.

    Every weight (convolutions and the classifier) is drawn by :data:`KAIMING_FAN_IN`, set
    globally as the authors' script sets it; with ``last_gamma`` each block's last BatchNorm
    starts with gamma 0. The random draws follow MXNet's global generator: seed it first.
    DropBlock draws one mask per batch, as the authors' DropBlock does.

    Args:
        config: A resolved recipe.
        ctx: The device.
        native_ops: Split-Attention with gluon_resnest's native operator (CPU, float32).
    """
    def build(**kwargs: Any) -> gluon.HybridBlock:
        return get_model(config['model'], classes=config['classes'],
                         last_gamma=config['last_gamma'], final_drop=config['final_drop'],
                         **config['model_kwargs'], **kwargs)

    # Synchronised BatchNorm takes batch statistics over all workers (training only; the
    # evaluation copy below uses plain BatchNorm, whose parameters have the same names).
    sync = {'norm_layer': HorovodSyncBatchNorm} if config['sync_bn'] else {}
    net = build(dropblock_prob=config['dropblock_prob'], native=native_ops,
                dropblock_layer=functools.partial(DropBlock, shared_mask=True), **sync)
    net.initialize(KAIMING_FAN_IN, ctx=ctx)
    # Validation and export run on a second instance that receives a copy of the weights:
    # oneDNN reorders weights in place for inference, and training on from reordered arrays
    # changes the last bits of later updates, so that ranks drift apart and a resumed run
    # would not repeat an uninterrupted one.
    eval_net = build()
    eval_net.initialize(ctx=ctx)
    eval_net.hybridize(static_alloc=True, static_shape=True)
    return net, eval_net


def build_model_and_trainer(run: Run) -> None:
    """The network (weights broadcast from rank 0), its evaluation twin and the trainer."""
    config = run.config
    gpus = mx.context.num_gpus()
    try:
        run.ctx = mx.context.Context(*worker_device(hvd.local_rank(), gpus))
    except ValueError as err:
        raise TrainingError(str(err)) from None
    if config['amp']:
        problem = check_amp(config['amp_dtype'], gpus)
        if problem:
            raise TrainingError(problem)
        init_amp(config['amp_dtype'])

    seed_everything(config['seed'])
    # On CPU in float32, the Split-Attention sums run as gluon_resnest's native operator
    # (forward and backward in one pass each; same parameters). The evaluation and export
    # copy keeps MXNet's operators, so exports need nothing but MXNet.
    fast = not config['amp'] and run.ctx.device_type == 'cpu' and native.load()
    run.net, run.eval_net = build_networks(config, run.ctx, native_ops=fast)
    params = run.net.collect_params()
    # Weight decay on convolution and FC weights only (paper §4.2): not on BN and biases.
    for name, param in params.items():
        if not name.endswith('weight'):
            param.wd_mult = 0.0
    if not run.options.elastic:  # an elastic run syncs its state instead
        broadcast_parameters(params, root_rank=0)
    run.trainer = _make_trainer(run)
    run.loss_fn = gluon.loss.SoftmaxCrossEntropyLoss(sparse_label=False)
    run.net.hybridize(static_alloc=True, static_shape=True)


def _make_trainer(run: Run) -> gluon.Trainer:
    # For the current world size: Horovod's trainer fixes its gradient scale at construction.
    config = run.config
    # An elastic run reduces all gradients as one operation (see collectives.fenced).
    trainer = hvd.DistributedTrainer(run.net.collect_params(), config['optimizer'], {
        'learning_rate': 0.0, 'momentum': config['momentum'], 'wd': config['weight_decay']},
        num_groups=1 if run.options.elastic else 0)
    if config['amp']:
        from mxnet.contrib import amp

        amp.init_trainer(trainer)
    return trainer


def resume(run: Run) -> None:
    """Load the newest complete checkpoint (chosen by rank 0) when resuming; reset the metrics."""
    if run.options.resume:
        if run.options.elastic:
            # An elastic run must not start with a collective (a joining worker would wait on
            # another one): every worker reads the shared folder itself, and the state sync
            # that follows gives all of them rank 0's weights.
            identity = run.identity or read_identity(run.run_dir) or {}
            loaded = resume_checkpoint(run.checkpoint_dir, run.net, run.trainer, ctx=run.ctx,
                                       run_id=identity.get('run_id'))
            found = str(loaded[0]) if loaded else ''
        else:
            # Rank 0 picks the newest checkpoint of this run that loads (falling back past
            # damaged ones, and saying so); the others load the one it picked.
            loaded = None
            if run.rank == 0:
                loaded = resume_checkpoint(run.checkpoint_dir, run.net, run.trainer,
                                           ctx=run.ctx, run_id=run.identity['run_id'])
            found = broadcast_object(str(loaded[0]) if loaded else '', root_rank=0,
                                     name='resume.checkpoint')
        if found:
            meta = loaded[1] if loaded else load_checkpoint(found, run.net, run.trainer,
                                                            ctx=run.ctx)
            restore_loss_scaler(run.trainer, meta.get('amp_loss_scaler'))
            run.start_epoch = meta['epoch'] + 1
            logger.info('resumed from %s; continuing at epoch %d', found, run.start_epoch + 1)
        else:
            logger.info('no checkpoint in %s; starting from scratch', run.checkpoint_dir)
    if run.rank == 0:
        if run.start_epoch:
            truncate_metrics(run.metrics_path, run.start_epoch)
        else:
            run.metrics_path.unlink(missing_ok=True)


def _write_worker_file(run: Run, suffix: str, text: str) -> None:
    folder = run.run_dir / 'workers'
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f'rank-{run.rank}.{suffix}').write_text(text + '\n')


def train_epoch(run: Run, epoch: int) -> dict[str, Any]:
    """One pass over this rank's shard; the epoch's record (loss and speed over all ranks).

    Raises:
        TrainingError: The loss stopped being finite (exit code 3).
    """
    config, net, trainer = run.config, run.net, run.trainer
    epochs = config['epochs']
    # Every epoch starts from seeds derived from (seed, epoch, rank), so a resumed run draws
    # the same random numbers as an uninterrupted one.
    seed_everything(config['seed'] * 100003 + epoch * 1009 + run.rank)
    run.train_loader.set_epoch(epoch)
    if config['dropblock_prob'] > 0:
        set_drop_prob(net, dropblock_prob(epoch, epochs, config['dropblock_prob']))
    # At least 1: the loader refuses a shard that cannot fill one batch (a ValueError).
    steps = len(run.train_loader)
    loss_sum, seen, tic = 0.0, 0, time.time()
    bar = _progress(steps, f'epoch {epoch + 1}/{epochs}', run)
    for step, (data, label) in enumerate(run.train_loader):
        lr = iteration_lr(config, run.train_loader.num_records, epoch * steps + step)
        trainer.set_learning_rate(lr)
        value = _train_step(run, data, label)
        _check_finite(run, value, epoch, step, lr)
        loss_sum += value * data.shape[0]
        seen += data.shape[0]
        if bar is not None:
            bar.set_postfix(loss=f'{value:.3f}', lr=f'{lr:.3g}')
            bar.update()
    if bar is not None:
        bar.close()
    elapsed = time.time() - tic
    _sync_norm_statistics(net)
    totals = allreduce_sum(np.array([loss_sum, seen]))
    return {'epoch': epoch, 'train_loss': totals[0] / totals[1], 'lr': lr,
            'img_per_sec': totals[1] / elapsed, 'val_top1': None, 'val_top5': None,
            'val_images': None,
            'dropblock_prob': dropblock_prob(epoch, epochs, config['dropblock_prob'])}


def _train_step(run: Run, data: mx.nd.NDArray, label: mx.nd.NDArray) -> float:
    """Forward, backward and update on one batch; the batch's mean loss."""
    config = run.config
    data = data.as_in_context(run.ctx)
    target = smooth_one_hot(label, config['classes'],
                            config['label_smoothing']).as_in_context(run.ctx)
    if config['mixup_alpha'] > 0:
        data, target = mixup(data, target, config['mixup_alpha'], np.random)
    with autograd.record():
        loss = run.loss_fn(run.net(data), target)
        if config['amp']:
            from mxnet.contrib import amp

            with amp.scale_loss(loss, run.trainer) as scaled:
                autograd.backward(scaled)
        else:
            loss.backward()
    if run.options.elastic:
        fenced(run.trainer.allreduce_grads)
        run.trainer.update(data.shape[0])
    else:
        run.trainer.step(data.shape[0])
    return float(loss.mean().asscalar())


def _sum_over_workers(run: Run, values: Sequence[float]) -> np.ndarray:
    """:func:`allreduce_sum`, :func:`~.collectives.fenced` in an elastic run."""
    if run.options.elastic:
        return fenced(lambda: allreduce_sum(values))
    return allreduce_sum(values)


def validate(run: Run) -> dict[str, float]:
    """Top-1 and top-5 on the validation set, over all ranks, of a copy of the weights."""
    copy_parameters(run.net, run.eval_net)
    result = evaluate(run.eval_net, run.val_loader, ctx=run.ctx,
                      allreduce=functools.partial(_sum_over_workers, run),
                      progress=run.rank == 0, total=len(run.val_loader))
    return {'val_top1': result['top1'], 'val_top5': result['top5'],
            'val_images': result['count']}


def save_epoch(run: Run, epoch: int, record: dict[str, Any]) -> None:
    """Rank 0: append the record to the metrics, redraw the curves, write a checkpoint."""
    append_metrics(run.metrics_path, record)
    plot_curves(read_metrics(run.metrics_path), run.run_dir / 'curves.png')
    extra = {'record': record, 'run_id': run.identity['run_id']}
    scaler = loss_scaler_state(run.trainer)
    if scaler is not None:
        extra['amp_loss_scaler'] = scaler
    save_checkpoint(run.checkpoint_dir, epoch, run.net, run.trainer, extra=extra,
                    keep=run.options.keep_checkpoints, model_spec=model_spec(run.config))
    logger.info('epoch %d: %s', epoch + 1, json.dumps(record))


def finish(run: Run) -> None:
    """Report skipped records, export the network (rank 0) and wait for every rank."""
    if run.train_loader.skipped:
        logger.warning('%d corrupt training records were skipped: %s',
                       len(run.train_loader.skipped), run.train_loader.skipped[:10])
    if run.options.debug_workers:
        _write_worker_file(run, 'params.sha256', params_digest(run.net))
    if run.rank == 0 and run.options.export:
        from ..deploy import export_network, load_class_names

        export_dir = run.run_dir / 'export'
        export_dir.mkdir(parents=True, exist_ok=True)
        copy_parameters(run.net, run.eval_net)
        config = run.config
        # The data set's class names go into the export's file set (written with it).
        classes_file = run.train_rec.with_suffix('.classes')
        names = load_class_names(str(classes_file)) if classes_file.is_file() else []
        files = export_network(run.eval_net, str(export_dir / 'model'),
                               input_size=config['eval_crop'],
                               classes=names if len(names) == config['classes']
                               else config['classes'],
                               mean=tuple(config['mean']), std=tuple(config['std']),
                               model_name=config['model'],
                               model_kwargs=config['model_kwargs'])
        logger.info('exported %s', ', '.join(str(f) for f in files))
    hvd.allreduce(mx.nd.zeros(1), name='done').wait_to_read()  # every rank finishes together


def train_model(options: RunOptions) -> int:
    """Train as ``options`` say on this worker (one of ``horovodrun``'s); returns 0.

    Raises:
        TrainingError: Bad input (exit code 2) or a diverged loss (exit code 3).
        ValueError: A recipe value or data file the loaders refuse.
    """
    # A crash in native code then also prints the Python stack of every thread.
    try:
        faulthandler.enable(all_threads=True)
    except ValueError:  # stderr has no file descriptor (captured, e.g. by a test runner)
        logger.debug('no faulthandler: stderr is not a file')
    run = start_workers(options)
    try:
        _train(run)
    finally:
        if run.lock is not None:
            run.lock.release()
    return 0


def _train(run: Run) -> None:
    options = run.options
    build_model_and_trainer(run)
    resume(run)
    if options.elastic:
        _train_elastic(run)
        finish(run)
        return
    epochs = run.config['epochs']
    if options.debug_workers:
        _write_worker_file(run, 'shard.json', json.dumps({
            'rank': run.rank, 'world_size': run.size, 'local_rank': hvd.local_rank(),
            'local_size': hvd.local_size(), 'cross_rank': hvd.cross_rank(),
            'cross_size': hvd.cross_size(), 'hostname': socket.gethostname(),
            'epoch': run.start_epoch,
            'num_records': run.train_loader.num_records,
            'indices': run.train_loader.indices(run.start_epoch)}))
    for epoch in range(run.start_epoch, epochs):
        record = train_epoch(run, epoch)
        if (epoch + 1) % run.config['val_interval'] == 0 or epoch + 1 == epochs:
            record.update(validate(run))
        if run.rank == 0:
            save_epoch(run, epoch, record)
    finish(run)


def _train_elastic(run: Run) -> None:
    """All epochs under ``horovodrun --min-np/--max-np``: workers may leave and join.

    The state is committed every ``commit_interval`` batches and at the end of every epoch.
    When a worker is lost, the others roll back to the last commit; when the set of workers
    changes, every worker rebuilds its data shard and trainer for the new world size (the
    global batch is kept, see :mod:`.elastic`), rank 0 sends its state, and the epoch goes on
    from the committed batch.
    """
    from . import elastic

    options = run.options
    state = elastic.GluonState(run.net, run.trainer, copies=[run.eval_net],
                               epoch=run.start_epoch, batch=0, loss_sum=0.0, seen=0,
                               size=run.size)

    def on_reset() -> None:
        run.rank, run.size = hvd.rank(), hvd.size()
        configure_logging(run.rank)
        if run.rank == 0 and run.identity is None:
            # Rank 0 is now a worker that did not claim the run directory: it writes the
            # checkpoints from here on, under the run's recorded identity.
            run.identity = read_identity(run.run_dir)
        run.config = resolve_config(options, run.size)
        run.train_loader.close()
        run.val_loader.close()
        run.train_loader, run.val_loader = build_loaders(
            run.config, run.train_rec, run.val_rec, run.rank, run.size, mp_context='forkserver')
        run.trainer = state.trainer = _make_trainer(run)
        state.load_trainer_state()

    state.register_reset_callbacks([on_reset])

    @elastic.run
    def train(state: elastic.GluonState) -> None:
        config, epochs = run.config, run.config['epochs']
        if state.size != run.size:
            logger.info('workers: %d -> %d; continuing at epoch %d, batch %d with %d images '
                        'per worker', state.size, run.size, state.epoch + 1, state.batch,
                        config['per_worker_batch_size'])
            state.size = run.size
        while state.epoch < epochs:
            epoch = state.epoch
            seed_everything(config['seed'] * 100003 + epoch * 1009 + state.batch * 7919
                            + run.rank)
            run.train_loader.set_epoch(epoch, state.batch)
            if config['dropblock_prob'] > 0:
                set_drop_prob(run.net, dropblock_prob(epoch, epochs, config['dropblock_prob']))
            steps = len(run.train_loader)
            loss_sum, seen, images, tic = 0.0, 0, 0, time.time()
            bar = _progress(steps, f'epoch {epoch + 1}/{epochs}', run)
            if bar is not None:
                bar.update(state.batch)
            for step, (data, label) in enumerate(run.train_loader, start=state.batch):
                lr = iteration_lr(config, run.train_loader.num_records, epoch * steps + step)
                run.trainer.set_learning_rate(lr)
                value = _train_step(run, data, label)
                _check_finite(run, value, epoch, step, lr)
                loss_sum += value * data.shape[0]
                seen += data.shape[0]
                images += data.shape[0]
                state.batch = step + 1
                if bar is not None:
                    bar.set_postfix(loss=f'{value:.3f}', lr=f'{lr:.3g}')
                    bar.update()
                if state.batch % options.commit_interval == 0 and state.batch < steps:
                    # Partial sums over the current workers, so that they survive a change.
                    totals = _sum_over_workers(run, np.array([loss_sum, seen]))
                    state.loss_sum += float(totals[0])
                    state.seen += int(totals[1])
                    loss_sum, seen = 0.0, 0
                    state.commit()
            if bar is not None:
                bar.close()
            elapsed = time.time() - tic
            _sync_norm_statistics(run.net)
            totals = _sum_over_workers(run, np.array([loss_sum, seen, images]))
            record = {'epoch': epoch,
                      'train_loss': (state.loss_sum + totals[0]) / (state.seen + totals[1]),
                      'lr': lr, 'img_per_sec': totals[2] / elapsed, 'val_top1': None,
                      'val_top5': None, 'val_images': None,
                      'dropblock_prob': dropblock_prob(epoch, epochs, config['dropblock_prob']),
                      'world_size': run.size}
            if (epoch + 1) % config['val_interval'] == 0 or epoch + 1 == epochs:
                record.update(validate(run))
            if run.rank == 0:
                # An epoch finished again after a roll-back replaces its first record.
                truncate_metrics(run.metrics_path, epoch)
                save_epoch(run, epoch, record)
            state.epoch, state.batch, state.loss_sum, state.seen = epoch + 1, 0, 0.0, 0
            state.commit()

    train(state)


def _check_finite(run: Run, value: float, epoch: int, step: int, lr: float) -> None:
    if not math.isfinite(value):
        last = latest_checkpoint(run.checkpoint_dir,
                                 run.identity['run_id'] if run.identity else None)
        raise TrainingError(
            f'the training loss became {value} at epoch {epoch + 1}, step {step + 1} '
            f'(lr {lr:.4g}); stopping. The last good checkpoint is '
            f'{str(last) if last else "none (no epoch finished)"}; lower the learning '
            f'rate and --resume from it.', EXIT_DIVERGED)


def _sync_norm_statistics(net: gluon.Block) -> None:
    """Average BatchNorm running statistics over workers so every rank holds the same model.

    One grouped Horovod operation, alone in the engine (as :func:`~.collectives.fenced` needs).
    """
    if hvd.size() == 1:
        return
    # Wait for every pending operation first: the updates of the running statistics by the
    # last training steps are not all ordered before later reads of those arrays (under load,
    # reading them returned statistics of some earlier step, a different set of layers in
    # every run). Horovod then reduces a plain copy of each statistic.
    mx.nd.waitall()
    stats = [param for name, param in
             sorted(net._collect_params_with_prefix().items())  # noqa: SLF001
             if name.endswith(('running_mean', 'running_var'))]
    copies = [mx.nd.array(param.data().asnumpy(), ctx=param.data().context,
                          dtype=param.data().dtype) for param in stats]
    reduced = hvd.grouped_allreduce(copies, average=True,
                                    name='gluon_resnest.norm_statistics')
    mx.nd.waitall()
    for param, value in zip(stats, reduced):
        param.set_data(value)
    mx.nd.waitall()


def _progress(total: int, desc: str, run: Run) -> Any:
    """Rank 0's progress report of a loop (see :mod:`gluon_resnest.progress`), None elsewhere."""
    if run.rank != 0:
        return None
    return progress(total=total, desc=desc, interval=run.options.progress_interval)
