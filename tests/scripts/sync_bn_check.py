"""Run under horovodrun: HorovodSyncBatchNorm on a split batch == BatchNorm on the whole batch.

Writes rank 0's comparison to the JSON file named on the command line.
"""
import json
import sys

import horovod.mxnet as hvd
import mxnet as mx
import numpy as np
from mxnet import autograd
from mxnet.gluon import nn

from gluon_resnest.layers.sync_bn import HorovodSyncBatchNorm


def build(norm, hybridize):
    net = nn.HybridSequential()
    net.add(nn.Conv2D(6, 3, padding=1, in_channels=3), norm(in_channels=6), nn.Activation('relu'),
            nn.Conv2D(4, 1, in_channels=6), norm(in_channels=4))
    net.initialize(mx.init.Xavier(rnd_type='gaussian'))
    for name, p in net._collect_params_with_prefix().items():
        p.set_data(mx.nd.array(np.random.RandomState(len(name)).uniform(0.5, 1.5, p.shape)))
    if hybridize:
        net.hybridize(static_alloc=True)
    return net


def run(net, x, weights):
    x = mx.nd.array(x)
    x.attach_grad()
    with autograd.record():
        y = net(x)
        loss = (y * mx.nd.array(weights)).sum()
    loss.backward()
    grads = {k: p.grad().asnumpy() for k, p in net._collect_params_with_prefix().items()
             if p.grad_req != 'null'}
    stats = {k: p.data().asnumpy() for k, p in net._collect_params_with_prefix().items()
             if 'running' in k}
    return y.asnumpy(), x.grad.asnumpy(), grads, stats, net(x).asnumpy()


def main():
    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    rng = np.random.RandomState(0)
    x = rng.normal(1.0, 2.0, (8, 3, 5, 5))
    w = rng.normal(size=(8, 4, 5, 5))
    part = slice(rank * 8 // size, (rank + 1) * 8 // size)
    report = {}
    for hybridize in (False, True):
        y, dx, grads, stats, infer = run(build(HorovodSyncBatchNorm, hybridize), x[part], w[part])
        ref_y, ref_dx, ref_grads, ref_stats, ref_infer = run(build(nn.BatchNorm, False), x, w)
        # parameter gradients: each worker holds its own share; their sum is the whole-batch one
        summed = {k: hvd.allreduce(mx.nd.array(g), average=False, name=f'g{hybridize}{k}')
                  .asnumpy() for k, g in grads.items()}
        report[f'hybridize={hybridize}'] = {
            'y': float(np.abs(y - ref_y[part]).max()),
            'dx': float(np.abs(dx - ref_dx[part]).max()),
            'grads': max(float(np.abs(summed[k] - ref_grads[k]).max()) for k in grads),
            'running': max(float(np.abs(stats[k] - ref_stats[k]).max()) for k in stats),
            'inference': float(np.abs(infer - ref_infer[part]).max()),
            'scale': float(np.abs(ref_y).max()),
        }
    if rank == 0:
        with open(sys.argv[1], 'w') as f:
            json.dump(report, f)


if __name__ == '__main__':
    main()
