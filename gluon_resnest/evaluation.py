"""Top-1/top-5 evaluation loop shared by ``tools/evaluate.py`` and the training code."""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, Sequence

import mxnet as mx
import numpy as np

from .errors import InputError
from .progress import progress as progress_report

__all__ = ['evaluate', 'topk_correct']

logger = logging.getLogger(__name__)


def topk_correct(logits: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> list[int]:
    """How many rows of ``logits`` have their label among the ``k`` largest scores, per ``k``.

    ``k`` larger than the number of classes counts every row.
    """
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    order = np.argsort(-logits, axis=1, kind='stable')
    hits = order == labels[:, None]
    return [int(hits[:, :k].any(axis=1).sum()) for k in ks]


def _check_labels(labels: np.ndarray, classes: int, loader: Any) -> None:
    """Refuse labels that are not class indices of the network (they would count as misses)."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    bad = ~((labels >= 0) & (labels < classes) & (labels == np.round(labels)))
    if bad.any():
        source = getattr(loader, 'rec_path', None)
        raise InputError(f'label {labels[bad][0]:g} is not a class index 0..{classes - 1} of '
                         f'the {classes}-class network', source)


def _unpack(batch: Any) -> tuple[Any, Any, int]:
    """(data, label, pad) from a ``(data, label)`` pair or an ``mx.io.DataBatch``."""
    if isinstance(batch, mx.io.DataBatch):
        return batch.data[0], batch.label[0], int(batch.pad or 0)
    data, label = batch[0], batch[1]
    return data, label, 0


def evaluate(net: Callable, loader: Iterable, ctx: Any = None,
             allreduce: Callable[[np.ndarray], np.ndarray] | None = None,
             progress: bool = True, total: int | None = None) -> dict[str, float]:
    """Top-1 and top-5 accuracy of ``net`` on ``loader``, and the images per second.

    Args:
        net: Maps a float32 NCHW batch to logits (a Gluon block or ``SymbolBlock``).
        loader: Yields ``(data, label)`` (NDArray or numpy) or ``mx.io.DataBatch`` (its
            ``pad`` trailing samples are ignored). Labels are class indices.
        ctx: Context, or list of contexts to split each batch over; default CPU.
        allreduce: Sums a float64 array over workers (e.g. with Horovod,
            ``lambda a: hvd.allreduce(mx.nd.array(a, dtype='float64'), average=False,
            name='eval').asnumpy()``), so that every rank gets the global figures.
        progress: Report progress (a bar on a terminal, else a log line every 30 s).
        total: Number of batches, for the progress bar.

    Returns:
        ``{'top1', 'top5', 'count', 'img_per_sec', 'seconds'}``: accuracies in [0, 1] over all
        workers; ``img_per_sec`` is this worker's end-to-end rate (decoding included) times the
        number of workers' images over this worker's, i.e. global images / wall time.
    """
    contexts = ctx if isinstance(ctx, (list, tuple)) else [ctx or mx.cpu()]
    correct1 = correct5 = count = 0
    start = time.perf_counter()
    batches = loader
    if progress:
        batches = progress_report(loader, total=total, desc='evaluate', unit='batch')
    for batch in batches:
        data, label, pad = _unpack(batch)
        if not isinstance(data, mx.nd.NDArray):
            data = mx.nd.array(np.asarray(data), dtype='float32')
        label = label.asnumpy() if isinstance(label, mx.nd.NDArray) else np.asarray(label)
        keep = data.shape[0] - pad
        if len(contexts) == 1:
            outputs = [net(data.as_in_context(contexts[0]))]
        else:
            parts = mx.gluon.utils.split_and_load(data, contexts, even_split=False)
            outputs = [net(part) for part in parts]
        logits = np.concatenate([o.astype('float32').asnumpy() for o in outputs], axis=0)[:keep]
        _check_labels(label[:keep], logits.shape[1], loader)
        top1, top5 = topk_correct(logits, label[:keep], (1, 5))
        correct1 += top1
        correct5 += top5
        count += keep
    seconds = time.perf_counter() - start
    local = count
    totals = np.array([correct1, correct5, count], dtype=np.float64)
    if allreduce is not None:
        totals = np.asarray(allreduce(totals), dtype=np.float64)
    correct1, correct5, count = (float(v) for v in totals)
    if count == 0:
        raise InputError('no image could be read', getattr(loader, 'rec_path', None))
    rate = local / seconds if seconds > 0 else float('inf')
    if local:
        rate *= count / local
    result = {'top1': correct1 / count, 'top5': correct5 / count, 'count': int(count),
              'img_per_sec': rate, 'seconds': seconds}
    logger.info('top-1 %.4f top-5 %.4f on %d images, %.1f images/s', result['top1'],
                result['top5'], result['count'], result['img_per_sec'])
    return result
