"""Run as one process: GluonState commit / restore / trainer rebuild round trips.

Writes a JSON report to the file named on the command line.
"""
import json
import sys

import horovod.mxnet as hvd
import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from gluon_resnest.training.elastic import GluonState


def step(net, trainer, seed):
    rng = np.random.RandomState(seed)
    x = mx.nd.array(rng.randn(4, 3, 8, 8))
    y = mx.nd.array(rng.randint(0, 5, 4))
    with autograd.record():
        loss = gluon.loss.SoftmaxCrossEntropyLoss()(net(x), y)
    loss.backward()
    trainer.step(4)


def arrays(net):
    return {k: p.data().asnumpy().copy() for k, p in net._collect_params_with_prefix().items()}


def momentum(trainer):
    states = trainer._updaters[0].states
    return {k: v.asnumpy().copy() for k, v in states.items()}


def same(a, b):
    return sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def main(out):
    hvd.init()
    mx.random.seed(0)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(6, 3), gluon.nn.BatchNorm(), gluon.nn.Activation('relu'),
            gluon.nn.GlobalAvgPool2D(), gluon.nn.Dense(5))
    net.initialize(mx.init.Xavier())
    net.hybridize()

    def make_trainer():
        return hvd.DistributedTrainer(net.collect_params(), 'sgd',
                                      {'learning_rate': 0.1, 'momentum': 0.9})

    trainer = make_trainer()
    step(net, trainer, 0)
    state = GluonState(net, trainer, epoch=3, batch=7)
    step(net, trainer, 1)
    state.epoch, state.batch = 4, 2
    state.commit()
    committed_params, committed_momentum = arrays(net), momentum(trainer)
    step(net, trainer, 2)
    state.epoch, state.batch = 9, 9
    moved = not same(arrays(net), committed_params)
    state.restore()
    report = {
        'moved': moved,
        'params_restored': same(arrays(net), committed_params),
        'bn_stats_kept': any('running' in k for k in committed_params),
        'momentum_restored': same(momentum(trainer), committed_momentum),
        'values_restored': [state.epoch, state.batch],
    }
    state.trainer = make_trainer()
    state.load_trainer_state()
    report['momentum_in_new_trainer'] = same(momentum(state.trainer), committed_momentum)
    with open(out, 'w') as f:
        json.dump(report, f)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1]))
