"""BatchNorm whose batch statistics are taken over every Horovod worker.

MXNet 1.9's ``SyncBatchNorm`` synchronises the devices of one process only; data-parallel
training with one process per GPU needs the statistics summed across processes. This block does
it with a custom operator that allreduces, per channel, the sums needed for the mean and the
variance in the forward pass and the two gradient sums in the backward pass.
"""
from __future__ import annotations

from typing import Any

import mxnet as mx
from mxnet.gluon import nn

_OP_NAME = 'gluon_resnest_hvd_sync_bn'


def _allreduce_sum(array: mx.nd.NDArray, name: str) -> mx.nd.NDArray:
    import horovod.mxnet as hvd

    if hvd.size() == 1:
        return array
    return hvd.allreduce(array, average=False, name=name)


class _SyncBatchNormOp(mx.operator.CustomOp):
    def __init__(self, eps: float, momentum: float, key: str) -> None:
        super().__init__()
        self.eps, self.momentum, self.key = eps, momentum, key
        self.calls = 0

    def forward(self, is_train, req, in_data, out_data, aux):
        x, gamma, beta = in_data
        moving_mean, moving_var = aux
        shape = (1, -1, 1, 1)
        if is_train:
            count = mx.nd.array([x.size / x.shape[1]], ctx=x.context)
            stats = mx.nd.concat(x.sum(axis=(0, 2, 3)), (x * x).sum(axis=(0, 2, 3)), count,
                                 dim=0)
            self.calls += 1
            stats = _allreduce_sum(stats, f'{self.key}.fwd.{self.calls}')
            c = x.shape[1]
            total = stats[2 * c:2 * c + 1]
            mean = stats[:c] / total
            var = mx.nd.maximum(stats[c:2 * c] / total - mean * mean, 0)
            moving_mean[:] = moving_mean * self.momentum + mean * (1 - self.momentum)
            moving_var[:] = moving_var * self.momentum + var * (1 - self.momentum)
        else:
            mean, var = moving_mean, moving_var
        inv_std = 1.0 / mx.nd.sqrt(var + self.eps)
        xhat = mx.nd.broadcast_mul(mx.nd.broadcast_sub(x, mean.reshape(shape)),
                                   inv_std.reshape(shape))
        y = mx.nd.broadcast_add(mx.nd.broadcast_mul(xhat, gamma.reshape(shape)),
                                beta.reshape(shape))
        self.assign(out_data[0], req[0], y)
        if is_train:
            self._saved = (xhat, inv_std, total)

    def backward(self, req, out_grad, in_data, out_data, in_grad, aux):
        x, gamma, _ = in_data
        dy = out_grad[0]
        xhat, inv_std, total = self._saved
        shape = (1, -1, 1, 1)
        c = x.shape[1]
        local = mx.nd.concat(dy.sum(axis=(0, 2, 3)), (dy * xhat).sum(axis=(0, 2, 3)), dim=0)
        # gamma/beta get this worker's sums, like every other parameter (the trainer averages);
        # the input gradient needs the sums over all workers.
        self.assign(in_grad[1], req[1], local[c:])
        self.assign(in_grad[2], req[2], local[:c])
        self.calls += 1
        sums = _allreduce_sum(local, f'{self.key}.bwd.{self.calls}')
        scale = (gamma * inv_std / total).reshape(shape)
        dx = total.reshape((1, 1, 1, 1)) * dy
        dx = mx.nd.broadcast_sub(dx, sums[:c].reshape(shape))
        dx = dx - mx.nd.broadcast_mul(xhat, sums[c:].reshape(shape))
        self.assign(in_grad[0], req[0], mx.nd.broadcast_mul(dx, scale))


@mx.operator.register(_OP_NAME)
class _SyncBatchNormProp(mx.operator.CustomOpProp):
    def __init__(self, eps: str = '1e-5', momentum: str = '0.9', key: str = 'bn') -> None:
        super().__init__(need_top_grad=True)
        self.eps, self.momentum, self.key = float(eps), float(momentum), key

    def list_arguments(self):
        return ['data', 'gamma', 'beta']

    def list_auxiliary_states(self):
        return ['moving_mean', 'moving_var']

    def infer_shape(self, in_shape):
        channels = (in_shape[0][1],)
        return [in_shape[0], channels, channels], [in_shape[0]], [channels, channels]

    def create_operator(self, ctx, shapes, dtypes):
        return _SyncBatchNormOp(self.eps, self.momentum, self.key)


class HorovodSyncBatchNorm(nn.HybridBlock):
    """Drop-in BatchNorm (NCHW) with statistics over all Horovod workers.

    Parameter names (``gamma``, ``beta``, ``running_mean``, ``running_var``) are those of
    ``nn.BatchNorm``, so checkpoints move freely between the two. Pass it as ``norm_layer`` to
    :func:`gluon_resnest.get_model`; call ``hvd.init()`` first. Without Horovod workers (size 1)
    it computes plain BatchNorm.
    """

    _count = 0

    def __init__(self, in_channels: int = 0, momentum: float = 0.9, epsilon: float = 1e-5,
                 gamma_initializer: Any = 'ones', beta_initializer: Any = 'zeros',
                 running_mean_initializer: Any = 'zeros',
                 running_variance_initializer: Any = 'ones', **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.momentum, self.epsilon = momentum, epsilon
        # Allreduce names must match across workers: blocks are numbered in creation order,
        # which is the same on every worker that builds the same network.
        HorovodSyncBatchNorm._count += 1
        self.key = f'syncbn{HorovodSyncBatchNorm._count}'
        shape = (in_channels,)
        self.gamma = self.params.get('gamma', shape=shape, init=gamma_initializer,
                                     allow_deferred_init=True)
        self.beta = self.params.get('beta', shape=shape, init=beta_initializer,
                                    allow_deferred_init=True)
        self.running_mean = self.params.get('running_mean', grad_req='null', shape=shape,
                                            init=running_mean_initializer,
                                            allow_deferred_init=True, differentiable=False)
        self.running_var = self.params.get('running_var', grad_req='null', shape=shape,
                                           init=running_variance_initializer,
                                           allow_deferred_init=True, differentiable=False)

    def hybrid_forward(self, F, x, gamma, beta, running_mean, running_var):  # noqa: N803
        return F.Custom(x, gamma, beta, running_mean, running_var, op_type=_OP_NAME,
                        eps=str(self.epsilon), momentum=str(self.momentum), key=self.key)
