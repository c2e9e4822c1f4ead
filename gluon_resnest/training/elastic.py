"""Elastic training for MXNet/Gluon on Horovod's framework-neutral elastic API.

Horovod 0.28 ships elastic states for TensorFlow, Keras and PyTorch only. The driver
(``horovodrun --min-np/--max-np --host-discovery-script``) does not depend on the framework,
and neither does the worker side's :mod:`horovod.common.elastic` (``State``, ``run_fn``); this
module adds what MXNet needs:

* :class:`GluonState`: the parameters (BatchNorm statistics included), the optimizer state, and
  plain values (epoch, batch position, metric partial sums). ``commit()`` copies them to host
  memory, ``restore()`` puts the copy back, ``sync()`` sends rank 0's to every worker.
* :func:`run`: runs a training function, and when a peer is lost or hosts change, shuts
  Horovod down, starts it again for the new set of workers, calls the state's reset
  callbacks (here: rebuild the data shards and the trainer for the new world size), syncs the
  state and calls the function again. MXNet reports a lost peer as an ``MXNetError`` raised
  where a Horovod result is read; :func:`run` turns it into Horovod's ``HorovodInternalError``.

What the loop derives from the world size is recomputed on every reset: the global batch stays
the recipe's, the per-worker batch becomes ``global_batch_size / size`` (the global batch must
be divisible by every world size the job may run at), so the learning rate and schedule do not
change. Random numbers are drawn from seeds derived from ``(seed, epoch, batch, rank)``, so
they need no saving.

Every collective operation of an elastic run goes through :func:`fenced`: it starts when no
other operation is pending, it is a single engine operation (the gradients are reduced as one
group), and it is waited for before anything else is queued. A lost peer then fails exactly
one operation, whose error MXNet's engine records from one thread, and which is read only
once nothing else runs. MXNet 1.9's engine records errors of asynchronous operations in
structures that are not safe to update from several threads at once; with several Horovod
results failing together (finished with an error by Horovod's thread while the engine's
threads fail the operations that depend on them), a survivor could corrupt its heap and die
instead of rolling back.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Sequence

import horovod.mxnet as hvd
import mxnet as mx
import numpy as np
from horovod.common.elastic import ObjectState, run_fn
from horovod.common.exceptions import HorovodInternalError
from mxnet import gluon

from .collectives import broadcast_, broadcast_object, fenced

__all__ = ['GluonState', 'broadcast_object', 'fenced', 'run']

logger = logging.getLogger(__name__)


def _reset() -> None:
    hvd.shutdown()
    hvd.init()


# How a lost peer shows in the MXNetError raised where a result is read: Horovod's own message
# once its background loop has stopped, or, when the read comes first, Gloo's I/O error
# (e.g. "Read error [10.0.0.2]: Connection reset by peer").
_PEER_LOST = ('Horovod has been shut down', 'Read error', 'Write error', 'Connection reset',
              'Connection closed', 'Connection refused', 'Timed out', 'gloo::')


def _horovod_failure(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, mx.base.MXNetError) and any(m in text for m in _PEER_LOST)


def run(func: Callable) -> Callable:
    """Decorator: run ``func(state, ...)`` elastically (see the module docstring).

    ``func`` must not start with a collective operation: workers joining the job sync the
    state first, and would otherwise wait on a different operation than the others.
    """
    @functools.wraps(func)
    def translated(state: GluonState, *args: Any, **kwargs: Any) -> Any:
        try:
            return func(state, *args, **kwargs)
        except mx.base.MXNetError as err:
            if _horovod_failure(err):
                raise HorovodInternalError(_message(err)) from err
            raise

    return run_fn(translated, _reset)


def _message(err: BaseException) -> str:
    """The last non-empty line of an MXNet error (its message; the lines before are a trace)."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(err).__name__


class GluonState(ObjectState):
    """Elastic state of a Gluon network, its trainer and plain values.

    Args:
        net: The network; all its parameters (BatchNorm running statistics included) are kept.
        trainer: The trainer whose optimizer state is kept. After a reset, assign a new trainer
            (``state.trainer = ...``) and call :meth:`load_trainer_state`.
        copies: Further blocks that receive copies of ``net``'s weights (e.g. an evaluation
            twin); not kept, but their arrays are cleared of errors when rolling back.
        **values: Plain values, exposed as attributes (e.g. ``epoch=0, batch=0``).
    """

    def __init__(self, net: gluon.Block, trainer: gluon.Trainer,
                 copies: Sequence[gluon.Block] = (), **values: Any) -> None:
        self.net = net
        self.trainer = trainer
        self._copies = list(copies)
        self._params = net._collect_params_with_prefix()  # stable, prefix-free names
        self._saved_params = self._snapshot_params()
        self._saved_trainer = self._trainer_bytes()
        super().__init__(bcast_object=broadcast_object, get_rank=hvd.rank, **values)

    def save(self) -> None:
        """Copy the parameters, optimizer state and values to host memory."""
        self._saved_params = self._snapshot_params()
        self._saved_trainer = self._trainer_bytes()
        super().save()

    def restore(self) -> None:
        """Put back the last committed copy, discarding everything since."""
        self._clear_failed_results()
        for name, param in self._params.items():
            param.set_data(mx.nd.array(self._saved_params[name], dtype=param.dtype))
        self.load_trainer_state()
        super().restore()

    def sync(self) -> None:
        """Give every worker rank 0's parameters, optimizer state and values.

        Raises:
            HorovodInternalError: A worker was lost meanwhile (the run then resets again).
        """
        try:
            self._sync()
        except mx.base.MXNetError as err:
            if _horovod_failure(err):
                raise HorovodInternalError(_message(err)) from err
            raise

    def _sync(self) -> None:
        if hvd.size() > 1:
            # One broadcast per data type, of all parameters of that type laid end to end.
            by_dtype: dict[Any, list[str]] = {}
            for name in sorted(self._params):
                by_dtype.setdefault(np.dtype(self._params[name].dtype), []).append(name)
            for dtype, names in sorted(by_dtype.items(), key=lambda item: item[0].str):
                arrays = [self._params[name].data() for name in names]
                flat = mx.nd.concat(*[a.reshape((-1,)) for a in arrays], dim=0)
                fenced(lambda flat=flat, dtype=dtype: broadcast_(
                    flat, root_rank=0, name=f'elastic.params.{dtype.name}'))
                offset = 0
                for name, array in zip(names, arrays):
                    self._params[name].set_data(
                        flat[offset:offset + array.size].reshape(array.shape))
                    offset += array.size
            mx.nd.waitall()
            self._saved_trainer = broadcast_object(self._saved_trainer, root_rank=0,
                                                   name='elastic.trainer')
            self.load_trainer_state()
        self._saved_params = self._snapshot_params()
        super().sync()

    def load_trainer_state(self) -> None:
        """Load the committed optimizer state into ``self.trainer`` (e.g. a rebuilt one)."""
        for updater in self.trainer._updaters:
            updater.set_states(self._saved_trainer)

    def _snapshot_params(self) -> dict[str, np.ndarray]:
        return {name: param.data().asnumpy() for name, param in self._params.items()}

    def _trainer_bytes(self) -> bytes:
        # The updater's state (e.g. momentum) without the optimizer object: the optimizer's
        # settings come from the recipe, and its learning rate is set at every step.
        return self.trainer._updaters[0].get_states(dump_optimizer=False)

    def _clear_failed_results(self) -> None:
        """Collect the errors MXNet parked on arrays that depend on the failed operation.

        The engine keeps an exception on every array written by (or after) the failed
        Horovod operation and raises it, once, at the next read; until then writes to that
        array fail as well. Reading each array once clears them.
        """
        # Everything finishes first: an error must not be cleared while another thread of
        # the engine may still be reading it.
        try:
            mx.nd.waitall()
        except mx.base.MXNetError:
            pass
        params = list(self._params.values())
        for block in self._copies:
            params += list(block.collect_params().values())
        for param in params:
            arrays = [param.data()]
            if param.grad_req != 'null':
                arrays.append(param.grad())
            for array in arrays:
                try:
                    array.wait_to_read()
                except mx.base.MXNetError:
                    pass
