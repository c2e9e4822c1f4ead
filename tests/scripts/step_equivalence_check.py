"""Worker (alone or under horovodrun): our trainer's first steps against the authors' step.

Our side is gluon_resnest's training code itself: ``loop.build_model_and_trainer`` (network,
initialisation, weight decay multipliers, Horovod trainer) and, per iteration,
``schedule.iteration_lr`` then ``loop._train_step`` (label smoothing, mixup, loss, backward,
``trainer.step``), the lines ``loop.train_epoch`` runs for every batch.

The other side is the step of the authors' ``scripts/gluon/train.py`` (ResNeSt repository),
written out here from its description:

* optimizer ``nag`` with ``wd`` and ``momentum`` and an ``mx.lr_scheduler.CosineScheduler`` of
  ``epochs * epoch_size`` updates, base rate ``--lr`` times the number of workers,
  ``warmup_epochs * epoch_size`` warm-up updates from 0, where
  ``epoch_size = ceil((N // workers) / batch_size)``; ``hvd.DistributedTrainer`` over all
  parameters; ``wd_mult = 0`` on the parameters whose names match ``.*beta|.*gamma|.*bias``;
* per batch: ``lam`` drawn by ``np.random.beta(alpha, alpha)``; the images become
  ``lam * X + (1 - lam) * X[::-1]``; the targets ``lam * y1 + (1 - lam) * y2``, where ``y1``
  and ``y2`` are the one-hot encodings of the labels and of the reversed labels with on value
  ``1 - eta + eta / classes`` and off value ``eta / classes`` (eta 0.1); softmax cross-entropy
  against the dense targets inside ``autograd.record()``, ``backward()`` on the per-sample
  losses, ``trainer.step(batch_size)``;
* at the start of every epoch the DropBlock scheduler sets the probability and re-hybridizes
  (the networks here have no DropBlock: its masks are random).

Both sides start from the same weights (ours, after our initialisation, copied by parameter
name), take the same batches and draw ``lam`` from the same numpy seed. Rank ``r`` writes
``result-r.json`` to the folder named on the command line: per comparison and step, the
largest absolute difference over all parameters, how many parameter arrays differ at all, the
worst one, and the learning rates both sides used.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys

import horovod.mxnet as hvd
import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from resnest.gluon.dropblock import DropBlockScheduler
from resnest.gluon.resnet import Bottleneck as AuthorsBottleneck
from resnest.gluon.resnet import ResNet as AuthorsResNet

from gluon_resnest import native
from gluon_resnest.training import loop, make_recipe, resolve
from gluon_resnest.training.options import RunOptions
from gluon_resnest.training.schedule import iteration_lr

STEPS = 10
BATCH = 8  # per worker
CLASSES = 10
SIZE = 32
STEPS_PER_EPOCH = 5  # full batches of 43 or 44 records
AUTHORS_LR = 0.01  # the authors' --lr: per worker
ALPHA = 0.2
ETA = 0.1
EPOCHS, WARMUP_EPOCHS = 2, 1


def our_config(size: int) -> dict:
    recipe = make_recipe({
        'model': 'resnest14', 'model_kwargs': {'stem_width': 8}, 'classes': CLASSES,
        'train_crop': SIZE, 'eval_crop': SIZE, 'global_batch_size': BATCH * size,
        'lr': AUTHORS_LR * size, 'warmup_epochs': WARMUP_EPOCHS, 'epochs': EPOCHS,
        'optimizer': 'nag', 'momentum': 0.9, 'weight_decay': 1e-4, 'label_smoothing': ETA,
        'mixup_alpha': ALPHA, 'dropblock_prob': 0.0, 'last_gamma': True, 'seed': 3})
    return resolve(recipe, size)


def num_records(size: int) -> int:
    # N // size == 43 records per worker: the authors' schedule counts ceil(43 / 8) = 6
    # iterations per epoch while an epoch runs 5 full batches.
    return 43 * size + size - 1


def trainable(net: gluon.Block) -> dict:
    return {k: p for k, p in net._collect_params_with_prefix().items()  # noqa: SLF001
            if p.grad_req != 'null'}


def snapshot(net: gluon.Block) -> dict:
    mx.nd.waitall()
    return {k: p.data().asnumpy().copy()
            for k, p in net._collect_params_with_prefix().items()}  # noqa: SLF001


def batches(rank: int) -> list:
    rng = np.random.RandomState(100 + rank)
    return [(mx.nd.array(rng.normal(0, 1, (BATCH, 3, SIZE, SIZE)), dtype='float32'),
             mx.nd.array(rng.randint(0, CLASSES, BATCH), dtype='float32'))
            for _ in range(STEPS)]


def run_ours(config: dict, rank: int, size: int, use_native: bool) -> tuple:
    """Our trainer: initial weights, weights after every step, learning rates, wd_mult."""
    available = native.load
    # The native Split-Attention operator is the CPU float32 path; without it the trainer
    # takes the path of GPUs and AMP (MXNet operators only).
    native.load = available if use_native else (lambda: False)
    try:
        run = loop.Run(RunOptions(recipe='digits'), config, rank, size, train_rec=None,
                       train_loader=None, val_loader=None)
        loop.build_model_and_trainer(run)
    finally:
        native.load = available
    initial = snapshot(run.net)
    wd_mult = {k: p.wd_mult for k, p in trainable(run.net).items()}
    np.random.seed(7 + rank)
    states, rates = [], []
    for i, (data, label) in enumerate(batches(rank)):
        lr = iteration_lr(config, num_records(size), i)
        run.trainer.set_learning_rate(lr)
        loop._train_step(run, data, label)  # noqa: SLF001
        states.append(snapshot(run.net))
        rates.append(lr)
    return initial, states, rates, wd_mult


def authors_net(ours_model: bool) -> gluon.HybridBlock:
    if ours_model:
        from gluon_resnest import get_model

        return get_model('resnest14', classes=CLASSES, stem_width=8, last_gamma=True)
    return AuthorsResNet(AuthorsBottleneck, [1, 1, 1, 1], radix=2, cardinality=1,
                         bottleneck_width=64, deep_stem=True, stem_width=8, avg_down=True,
                         avd=True, avd_first=False, use_splat=True, dropblock_prob=0,
                         final_drop=0.0, classes=CLASSES, last_gamma=True,
                         name_prefix='resnest_', input_size=SIZE)


def run_authors(initial: dict, rank: int, size: int, ours_model: bool, tag: str) -> tuple:
    """The authors' step, from ``initial`` weights."""
    net = authors_net(ours_model)
    net.initialize(mx.init.Xavier(rnd_type='gaussian', factor_type='in', magnitude=2))
    params = net._collect_params_with_prefix()  # noqa: SLF001
    assert sorted(params) == sorted(initial), 'parameter names differ'
    for name, param in params.items():
        param.set_data(mx.nd.array(initial[name], dtype=initial[name].dtype))
    drop_scheduler = DropBlockScheduler(net, 0, 0.1, EPOCHS)
    net.hybridize()
    for param in net.collect_params('.*beta|.*gamma|.*bias').values():
        param.wd_mult = 0.0
    wd_mult = {k: p.wd_mult for k, p in trainable(net).items()}
    epoch_size = int(math.ceil(int(num_records(size) // size) / BATCH))
    schedule = mx.lr_scheduler.CosineScheduler(EPOCHS * epoch_size, base_lr=AUTHORS_LR * size,
                                               warmup_steps=WARMUP_EPOCHS * epoch_size,
                                               warmup_begin_lr=0.0)
    opt = mx.optimizer.create('nag', wd=1e-4, momentum=0.9, lr_scheduler=schedule)
    # (The prefix only names Horovod's operations: several trainers live in this process.)
    trainer = hvd.DistributedTrainer(net.collect_params(), opt, prefix=tag)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss(sparse_label=False)

    def one_hot(label: mx.nd.NDArray) -> mx.nd.NDArray:
        return label.one_hot(CLASSES, on_value=1 - ETA + ETA / CLASSES,
                             off_value=ETA / CLASSES)

    np.random.seed(7 + rank)
    states, rates = [], []
    for i, (X, label) in enumerate(batches(rank)):  # noqa: N806 - their name
        if i % STEPS_PER_EPOCH == 0:
            drop_scheduler(i // STEPS_PER_EPOCH)
        lam = np.random.beta(ALPHA, ALPHA)
        X = lam * X + (1 - lam) * X[::-1]  # noqa: N806
        target = lam * one_hot(label) + (1 - lam) * one_hot(label[::-1])
        with autograd.record():
            loss = loss_fn(net(X.astype('float32', copy=False)),
                           target.astype('float32', copy=False))
        loss.backward()
        trainer.step(BATCH)
        states.append(snapshot(net))
        rates.append(trainer.learning_rate)
    return states, rates, wd_mult


def digest(state: dict) -> str:
    """Of the trained parameters (each rank keeps its own BatchNorm running statistics)."""
    sha = hashlib.sha256()
    for name in sorted(state):
        if not name.endswith(('running_mean', 'running_var')):
            sha.update(name.encode() + state[name].tobytes())
    return sha.hexdigest()


def compare(a: list, b: list) -> list:
    rows = []
    for step, (x, y) in enumerate(zip(a, b)):
        worst, worst_name, differing = 0.0, None, 0
        trained = [k for k in x if not k.endswith(('running_mean', 'running_var'))]
        for name in trained:
            diff = float(np.abs(x[name].astype(np.float64) - y[name]).max())
            if not np.array_equal(x[name], y[name]):
                differing += 1
            if diff > worst:
                worst, worst_name = diff, name
        stats = max(float(np.abs(x[k].astype(np.float64) - y[k]).max())
                    for k in x if k.endswith(('running_mean', 'running_var')))
        scale = float(np.abs(x[worst_name]).max()) if worst_name else 0.0
        rows.append({'step': step + 1, 'max_abs_diff': worst, 'worst_param': worst_name,
                     'worst_param_max_abs': scale, 'differing_params': differing,
                     'params': len(trained), 'running_stats_max_abs_diff': stats})
    return rows


def main() -> None:
    out_dir = sys.argv[1]
    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    config = our_config(size)
    result = {'rank': rank, 'size': size}

    initial, plain, rates, wd_mult = run_ours(config, rank, size, use_native=False)
    # Our initialisation against the authors' global initializer on their network, from the
    # seed our trainer uses.
    loop.seed_everything(config['seed'])
    theirs = authors_net(ours_model=False)
    theirs.initialize(mx.init.Xavier(rnd_type='gaussian', factor_type='in', magnitude=2))
    their_init = snapshot(theirs)
    result['init_identical'] = sorted(k for k in initial
                                      if np.array_equal(initial[k], their_init[k]))
    result['init_differing'] = sorted(k for k in initial
                                      if not np.array_equal(initial[k], their_init[k]))

    same_model, rates_a, wd_a = run_authors(initial, rank, size, True, 'authors_ours.')
    their_model, rates_b, wd_b = run_authors(initial, rank, size, False, 'authors_theirs.')
    _, fast, _, _ = run_ours(config, rank, size, use_native=native.load())
    result['native'] = bool(native.load())
    result['our_lr'] = rates
    result['authors_lr'] = rates_a
    result['authors_lr_their_model'] = rates_b
    result['wd_mult_equal'] = wd_mult == wd_a == wd_b
    result['wd_mult_zero'] = sorted(k for k, v in wd_mult.items() if v == 0)
    result['ours_vs_authors_step_same_model'] = compare(plain, same_model)
    result['ours_vs_authors_their_model'] = compare(plain, their_model)
    result['ours_native_vs_authors_their_model'] = compare(fast, their_model)
    result['ours_native_vs_ours'] = compare(fast, plain)
    result['final_digest'] = {key: digest(states[-1]) for key, states in (
        ('ours', plain), ('ours_native', fast), ('authors_their_model', their_model))}
    result['weights_moved'] = max(float(np.abs(plain[-1][k] - initial[k]).max())
                                  for k in initial)
    with open(f'{out_dir}/result-{rank}.json', 'w') as handle:
        json.dump(result, handle, indent=1)


if __name__ == '__main__':
    main()
