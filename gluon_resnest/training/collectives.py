"""Broadcasts for the training loop, built on Horovod's allreduce.

Horovod 0.28's MXNet broadcast reads the operation's name after handing the operation to its
background thread. When that thread completes the broadcast first (a peer was already waiting
and this process was descheduled for a moment), MXNet has already freed the operation and
with it the name, and the process dies with SIGSEGV. Horovod's allreduce has no such read, so
a broadcast here is a sum to which every rank but the root contributes zeros (negative zeros
for floating-point data: ``-0.0 + x`` is ``x`` for every ``x``, signed zeros included), so every
rank ends with the root's bits.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

import cloudpickle
import horovod.mxnet as hvd
import mxnet as mx
import numpy as np

__all__ = ['broadcast_', 'broadcast_object', 'broadcast_parameters', 'fenced']

T = TypeVar('T')


def fenced(push: Callable[[], T]) -> T:
    """Run ``push`` (which queues one Horovod operation) alone, and wait for its result.

    Everything queued before is finished first, and ``push``'s operation and whatever it
    writes are finished before returning, so a failure surfaces here, as an ``MXNetError``,
    with nothing else in flight.
    """
    mx.nd.waitall()
    result = push()
    mx.nd.waitall()
    return result


def broadcast_(tensor: mx.nd.NDArray, root_rank: int = 0, name: str | None = None
               ) -> mx.nd.NDArray:
    """Overwrite ``tensor`` on every rank with ``root_rank``'s, in place (asynchronously)."""
    if hvd.size() == 1:
        return tensor
    if hvd.rank() != root_rank:
        if np.issubdtype(np.dtype(tensor.dtype), np.floating):
            # (MXNet's scalar fill drops the sign of -0.0; a product keeps it.)
            zeros = mx.nd.zeros(tensor.shape, ctx=tensor.context, dtype=tensor.dtype)
            (zeros * -1).copyto(tensor)
        else:
            tensor[:] = 0
    return hvd.allreduce_(tensor, name=name, op=hvd.Sum)


def broadcast_parameters(params: Any, root_rank: int = 0, prefix: str = '') -> None:
    """Give every rank ``root_rank``'s values of a Gluon ``ParameterDict`` (or name: array dict).

    Raises:
        ValueError: A parameter is not initialised yet (deferred shape): run the network once
            on a sample, or give the layers their input sizes, before broadcasting.
    """
    items = sorted(params.items())
    for name, param in items:
        if isinstance(param, mx.nd.NDArray):
            arrays = [param]
        else:
            if param._deferred_init:
                raise ValueError(f'parameter {name} is not initialised yet (its shape is '
                                 f'deferred): run the network once before broadcasting')
            arrays = param.list_data()
        for i, array in enumerate(arrays):
            broadcast_(array, root_rank, name=f'{prefix}{name}.{i}')


def broadcast_object(obj: Any, root_rank: int = 0, name: str | None = None) -> Any:
    """``root_rank``'s ``obj`` (any picklable object) on every rank.

    Its two operations (size, then bytes) each run :func:`fenced`.
    """
    name = name or type(obj).__name__
    if hvd.size() == 1:
        return obj
    if hvd.rank() == root_rank:
        payload = np.frombuffer(cloudpickle.dumps(obj), dtype=np.uint8)
        size = mx.nd.array([payload.size], dtype='int64')
    else:
        payload, size = None, mx.nd.zeros((1,), dtype='int64')
    fenced(lambda: broadcast_(size, root_rank, name=f'{name}.size'))
    data = (mx.nd.array(payload, dtype='uint8') if payload is not None
            else mx.nd.zeros((int(size.asscalar()),), dtype='uint8'))
    fenced(lambda: broadcast_(data, root_rank, name=f'{name}.data'))
    if hvd.rank() == root_rank:
        return obj
    return cloudpickle.loads(data.asnumpy().tobytes())
