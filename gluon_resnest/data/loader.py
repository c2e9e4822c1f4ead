"""Training and validation loaders: sharded RecordIO, decoded and augmented in worker processes.

Each batch is one task for a pool of worker processes. A worker reads the records with
:class:`~gluon_resnest.data.records.RecordFile`, decodes and transforms every image with OpenCV and
writes the float32 (B, 3, S, S) batch straight into a shared-memory slot (files in ``/dev/shm``,
mapped by the main process and the workers); the main process copies the slot into an NDArray.
Where ``/dev/shm`` is missing or too small the batch travels through the result queue instead.
Batches come out in order and their randomness depends only on ``(seed, epoch, rank, batch)``,
so a run is reproducible whatever the number of workers.

A record that cannot be read or decoded is logged once, appended to ``loader.skipped`` and
replaced (training) by the next record of the shard, or dropped (validation).
"""
from __future__ import annotations

import logging
import math
import mmap
import os
import queue
import tempfile
import traceback
import uuid
import weakref
from typing import Iterator, List, Sequence, Tuple

import mxnet as mx
import numpy as np

from ..constants import CROP_RATIO, DEFAULT_CROP, IMAGENET_MEAN, IMAGENET_STD
from ..errors import InputError
from .records import CorruptRecordError, RecordFile, check_labels, unpack_image_record
from .sharding import eval_shard, shard_indices
from .transforms import ImageDecodeError, TrainTransform, ValTransform, decode_image

__all__ = ['TrainLoader', 'ValLoader', 'check_records']

logger = logging.getLogger(__name__)

Skip = Tuple[str, int, str]
_SPARES = 32  # replacement records a training batch may draw on for corrupt ones
_READY_TIMEOUT_S = 300.0


class _BatchJob:
    """What a worker does with one batch: read, decode, transform (picklable)."""

    def __init__(self, records: RecordFile, transform, replace_corrupt: bool):
        self.records = records
        self.transform = transform
        self.replace_corrupt = replace_corrupt

    def _load(self, pos: int) -> Tuple[float, np.ndarray]:
        data = self.records.read(pos)
        label, encoded = unpack_image_record(data)
        return label, decode_image(encoded)

    def run(self, positions: Sequence[int], spares: Sequence[int], seed: Sequence[int] | None,
            out: np.ndarray) -> Tuple[np.ndarray, int, List[Skip]]:
        """Fill ``out[:n]``; returns (labels, n, skipped records)."""
        rng = np.random.default_rng(list(seed)) if seed is not None else None
        labels = np.empty(len(positions), np.float32)
        skipped: List[Skip] = []
        spare_iter = iter(spares)
        n = 0
        for pos in positions:
            while True:
                try:
                    label, img = self._load(pos)
                    break
                except (CorruptRecordError, ImageDecodeError, ValueError) as err:
                    reason = err.reason if isinstance(err, CorruptRecordError) else str(err)
                    skipped.append((self.records.rec_path, int(self.records.keys[pos]), reason))
                    if not self.replace_corrupt:
                        pos = None
                        break
                    pos = next(spare_iter, None)
                    if pos is None:
                        raise RuntimeError(
                            f'{self.records.rec_path}: more than {len(spares)} corrupt records '
                            f'around one batch; last: {reason}') from err
            if pos is None:
                continue
            self.transform(img, out[n], rng)
            labels[n] = label
            n += 1
        return labels[:n], n, skipped


def _open_slot(path: str, nbytes: int) -> Tuple[mmap.mmap, np.ndarray]:
    with open(path, 'r+b') as f:
        buf = mmap.mmap(f.fileno(), nbytes)
    return buf, np.frombuffer(buf, np.float32)


def _worker_loop(job: _BatchJob, task_q, result_q, slot_paths: List[str],
                 shape: Tuple[int, ...], worker_id: int) -> None:
    import cv2
    cv2.setNumThreads(0)  # sequential: a pool inherited through fork may be unusable
    nbytes = int(np.prod(shape)) * 4
    views = []
    try:
        for path in slot_paths:
            views.append(_open_slot(path, nbytes)[1].reshape(shape))
    except OSError:
        result_q.put(('error', -1, -1, -1, traceback.format_exc()))
        return
    result_q.put(('ready', worker_id))
    parent = os.getppid()
    while True:
        try:
            task = task_q.get(timeout=5.0)
        except queue.Empty:
            if os.getppid() != parent:  # the main process died without stopping us
                break
            continue
        if task is None:
            break
        gen, batch_id, slot, positions, spares, seed = task
        try:
            out = views[slot] if views else np.empty(shape, np.float32)
            labels, n, skipped = job.run(positions, spares, seed, out)
            payload = None if views else out[:n]
            result_q.put(('ok', gen, batch_id, slot, labels, n, skipped, payload))
        except Exception:  # noqa: BLE001 - reported to the main process, which raises
            result_q.put(('error', gen, batch_id, slot, traceback.format_exc()))


_SLOT_PREFIX = 'gluon_resnest_'


def _remove_stale_slots(shm: str) -> None:
    """Delete slot files of loaders whose process died before unlinking them (kill -9)."""
    for name in os.listdir(shm):
        pid = name[len(_SLOT_PREFIX):].split('_', 1)[0]
        if not (name.startswith(_SLOT_PREFIX) and pid.isdigit()):
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            try:
                os.unlink(os.path.join(shm, name))
                logger.info('removed %s, left by a data loader that was killed', name)
            except OSError:
                pass
        except PermissionError:  # another user's live process
            pass


def _shm_dir(nbytes_total: int) -> str | None:
    path = '/dev/shm'
    if not os.path.isdir(path) or not os.access(path, os.W_OK):
        return None
    stat = os.statvfs(path)
    if stat.f_bavail * stat.f_frsize < 1.5 * nbytes_total:
        return None
    return path


def _shutdown(processes, task_q, buffers) -> None:
    for _ in processes:
        try:
            task_q.put(None)
        except (OSError, ValueError):
            break
    for p in processes:
        p.join(timeout=5)
        if p.is_alive():
            p.terminate()
            p.join(timeout=5)
    for buf in buffers:
        try:
            buf.close()
        except BufferError:
            pass  # an NDArray view is still alive; the mapping goes with the process


class _WorkerPool:
    """Worker processes that run a :class:`_BatchJob` per task, results in task order."""

    def __init__(self, job: _BatchJob, num_workers: int, shape: Tuple[int, ...],
                 prefetch: int, mp_context: str | None):
        self.job = job
        self.num_workers = num_workers
        self.shape = shape
        self.num_slots = max(prefetch, num_workers, 1)
        self.mp_context = mp_context
        self.transport = 'inline' if num_workers == 0 else None
        self._processes: list = []
        self._finalizer = None
        self._gen = 0
        self._free: List[int] = []
        self._views: List[np.ndarray] = []

    def _start(self) -> None:
        import multiprocessing as mp
        method = self.mp_context
        if method is None:
            method = 'fork' if 'fork' in mp.get_all_start_methods() else 'spawn'
        ctx = mp.get_context(method)
        nbytes = int(np.prod(self.shape)) * 4
        shm = _shm_dir(nbytes * self.num_slots)
        paths, buffers = [], []
        try:
            if shm is not None:
                _remove_stale_slots(shm)
                tag = f'{_SLOT_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:8]}'
                for slot in range(self.num_slots):
                    fd, path = tempfile.mkstemp(prefix=f'{tag}_{slot}_', dir=shm)
                    paths.append(path)
                    try:
                        os.ftruncate(fd, nbytes)
                    finally:
                        os.close(fd)
                    buf, view = _open_slot(path, nbytes)
                    buffers.append(buf)
                    self._views.append(view.reshape(self.shape))
            self.transport = 'shared memory' if paths else 'queue'
            self._task_q = ctx.Queue()
            self._result_q = ctx.Queue()
            for wid in range(self.num_workers):
                p = ctx.Process(target=_worker_loop, daemon=True, name=f'gluon_resnest-data-{wid}',
                                args=(self.job, self._task_q, self._result_q, paths, self.shape,
                                      wid))
                p.start()
                self._processes.append(p)
            self._finalizer = weakref.finalize(self, _shutdown, list(self._processes),
                                               self._task_q, buffers)
            ready = 0
            while ready < self.num_workers:
                msg = self._get(_READY_TIMEOUT_S)
                if msg[0] == 'error':
                    raise RuntimeError(f'data worker failed to start:\n{msg[4]}')
                ready += msg[0] == 'ready'
        finally:
            for path in paths:  # every worker has mapped them (or failed): nothing can leak
                os.unlink(path)
        self._free = list(range(self.num_slots))
        logger.debug('%d data workers started (%s transport)', self.num_workers, self.transport)

    def _get(self, timeout: float | None = None):
        waited = 0.0
        while True:
            try:
                return self._result_q.get(timeout=1.0)
            except queue.Empty:
                waited += 1.0
                dead = [p for p in self._processes if not p.is_alive()]
                if dead:
                    self.close()
                    raise RuntimeError(
                        f'data worker {dead[0].name} (pid {dead[0].pid}) exited unexpectedly '
                        f'with code {dead[0].exitcode}') from None
                if timeout is not None and waited >= timeout:
                    self.close()
                    raise RuntimeError(f'data workers did not answer within {timeout:.0f} s') \
                        from None

    def close(self) -> None:
        """Stop the workers (they restart on the next iteration)."""
        self._views = []
        self._free = []
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self._processes = []

    def iterate(self, tasks: List[tuple]) -> Iterator[Tuple[np.ndarray, int, List[Skip],
                                                            np.ndarray]]:
        """Yield (labels, n, skipped, batch array) per task, in order.

        The batch array may be a view of a shared slot: copy it before asking for the next one.
        """
        if self.num_workers == 0:
            for positions, spares, seed in tasks:
                out = np.empty(self.shape, np.float32)
                labels, n, skipped = self.job.run(positions, spares, seed, out)
                yield labels, n, skipped, out[:n]
            return
        if not self._processes:
            self._start()
        self._gen += 1
        gen = self._gen
        pending = {}
        next_send = next_yield = 0
        try:
            while next_yield < len(tasks):
                while next_send < len(tasks) and self._free:
                    slot = self._free.pop()
                    self._task_q.put((gen, next_send, slot) + tuple(tasks[next_send]))
                    next_send += 1
                while next_yield not in pending:
                    msg = self._get()
                    if msg[0] == 'ready':
                        continue
                    if msg[1] != gen:  # a task of an abandoned iteration: its slot is free now
                        self._free.append(msg[3])
                        continue
                    if msg[0] == 'error':
                        self._free.append(msg[3])
                        raise RuntimeError(f'data worker failed on batch {msg[2]}:\n{msg[4]}')
                    pending[msg[2]] = msg[3:]
                slot, labels, n, skipped, payload = pending.pop(next_yield)
                array = payload if payload is not None else self._views[slot][:n]
                try:
                    yield labels, n, skipped, array
                finally:
                    self._free.append(slot)
                next_yield += 1
        finally:
            for entry in pending.values():
                self._free.append(entry[0])


def check_records(records: RecordFile, sample: int = 64) -> None:
    """Refuse a file with unreadable record headers or whose first images do not decode.

    Every record's header is read and the first ``sample`` images are decoded, so that a
    damaged file is found before a run spends time on it (``mx.io.ImageRecordIter`` even
    aborts the process on such records).

    Raises:
        InputError: naming the file and the first bad record.
    """
    _, readable = records.labels()
    if not readable.all():
        pos = int(np.flatnonzero(~readable)[0])
        raise InputError(f'record {int(records.keys[pos])} (and {int((~readable).sum()) - 1} '
                         f'more) cannot be read: not a RecordIO file of images, or its .idx '
                         f'belongs to another file', records.rec_path)
    for pos in range(min(sample, len(records))):
        try:
            decode_image(unpack_image_record(records.read(pos))[1])
        except ValueError as err:
            raise InputError(f'record {int(records.keys[pos])} cannot be decoded '
                             f'({getattr(err, "reason", err)})', records.rec_path) from None


class _LoaderBase:
    def __init__(self, rec_path: str, batch_size: int, num_workers: int, ctx: mx.Context | None,
                 idx_path: str | None, num_classes: int | None = None):
        if batch_size <= 0:
            raise ValueError(f'batch_size must be positive, got {batch_size}')
        if num_workers < 0:
            raise ValueError(f'num_workers must be >= 0, got {num_workers}')
        self.records = RecordFile(rec_path, idx_path)
        self.rec_path = self.records.rec_path
        if num_classes is not None:
            check_labels(self.records, int(num_classes))
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.ctx = ctx if ctx is not None else mx.cpu()
        self.skipped: List[Skip] = []
        self._seen = set()
        self._pool: _WorkerPool | None = None

    def _note_skips(self, skipped: List[Skip]) -> None:
        for entry in skipped:
            if (entry[0], entry[1]) not in self._seen:
                self._seen.add((entry[0], entry[1]))
                self.skipped.append(entry)
                logger.warning('skipping corrupt record %d of %s: %s', entry[1], entry[0],
                               entry[2])

    def _batches(self, tasks: List[tuple]) -> Iterator[Tuple[mx.nd.NDArray, mx.nd.NDArray]]:
        for labels, n, skipped, array in self._pool.iterate(tasks):
            self._note_skips(skipped)
            if n == 0:
                continue
            data = mx.nd.array(array, ctx=self.ctx, dtype=np.float32)
            yield data, mx.nd.array(labels, ctx=self.ctx, dtype=np.float32)

    def start(self) -> None:
        """Start the worker processes now rather than at the first iteration.

        Workers are forked (by default): start them before the process runs threads that must
        not be forked, i.e. before ``hvd.init()`` (Horovod's background thread) and before MXNet
        custom operators such as the synchronised BatchNorm run; or pass
        ``mp_context='forkserver'``.
        """
        if self._pool is not None and self.num_workers > 0 and not self._pool._processes:
            self._pool._start()

    def close(self) -> None:
        """Stop the worker processes (restarted by the next iteration)."""
        if self._pool is not None:
            self._pool.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TrainLoader(_LoaderBase):
    """Sharded, shuffled, augmented training batches from a RecordIO file.

    Every epoch all ranks draw the same permutation from ``(seed, epoch)`` and each reads its own
    block of ``num_samples = ceil(N / world_size)`` records (see
    :func:`~gluon_resnest.data.sharding.shard_indices`); ``len(loader) = num_samples // batch_size``
    full batches, identical on every rank.

    Args:
        rec_path: the ``.rec`` file (its ``.idx`` beside it, or ``idx_path``).
        batch_size: images per batch on this rank.
        input_size: output side S.
        rank: this worker's rank.
        world_size: number of workers.
        seed: base seed of the shuffling and the augmentations.
        num_workers: decoding processes; 0 decodes in the calling process.
        crop_scale: range of the random crop's area fraction.
        crop_ratio: range of the random crop's aspect ratio.
        hflip: random horizontal flips.
        color_jitter: brightness/contrast/saturation jitter (0 disables).
        pca_noise: PCA lighting noise (0 disables).
        auto_augment: AutoAugment ImageNet policy.
        mean: RGB mean subtracted (0-255 scale).
        std: RGB standard deviation divided by.
        idx_path: the index file, if not beside the ``.rec``.
        ctx: context of the returned arrays (default CPU).
        prefetch: batches in flight (default ``2 * num_workers``).
        mp_context: start method of the workers; default ``'fork'`` where available (instant,
            like Gluon's DataLoader; the workers use only numpy/OpenCV, never MXNet), else
            ``'spawn'`` (which needs the ``if __name__ == '__main__':`` guard in the script).
        num_classes: if given, every label must be a class index below it (checked up front
            by reading every record's header; see
            :func:`~gluon_resnest.data.records.check_labels`).

    Yields:
        ``(data, label)``: float32 (B, 3, S, S) normalised images and float32 (B,) labels.
    """

    def __init__(self, rec_path: str, batch_size: int, input_size: int = DEFAULT_CROP,
                 rank: int = 0, world_size: int = 1, seed: int = 0, num_workers: int = 2,
                 crop_scale: Tuple[float, float] = (0.08, 1.0),
                 crop_ratio: Tuple[float, float] = (3 / 4, 4 / 3), hflip: bool = True,
                 color_jitter: float = 0.4, pca_noise: float = 0.1, auto_augment: bool = False,
                 mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, idx_path: str | None = None,
                 ctx: mx.Context | None = None, prefetch: int | None = None,
                 mp_context: str | None = None, num_classes: int | None = None):
        super().__init__(rec_path, batch_size, num_workers, ctx, idx_path, num_classes)
        self.num_records = len(self.records)
        self.rank, self.world_size, self.seed = int(rank), int(world_size), int(seed)
        shard_indices(self.num_records, self.rank, self.world_size)  # validates rank/world_size
        self.num_samples = -(-self.num_records // self.world_size)
        if self.num_samples < self.batch_size:
            raise ValueError(f'{self.rec_path}: a shard of {self.num_samples} records '
                             f'({self.num_records} over {self.world_size} ranks) cannot fill one '
                             f'batch of {self.batch_size}')
        self.epoch = self.start_batch = 0
        self.transform = TrainTransform(input_size, crop_scale, crop_ratio, hflip, color_jitter,
                                        pca_noise, auto_augment, mean, std)
        shape = (self.batch_size, 3, self.transform.size, self.transform.size)
        self._pool = _WorkerPool(_BatchJob(self.records, self.transform, replace_corrupt=True),
                                 self.num_workers, shape,
                                 2 * self.num_workers if prefetch is None else int(prefetch),
                                 mp_context)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch whose permutation and augmentations the next iteration uses.

        Args:
            epoch: the epoch.
            start_batch: the next iteration begins with this batch of the shard (an elastic
                run that continues an epoch part-way through).
        """
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def __len__(self) -> int:
        return self.num_samples // self.batch_size

    def indices(self, epoch: int | None = None) -> List[int]:
        """Record positions of this rank's shard in ``epoch`` (default the current one)."""
        epoch = self.epoch if epoch is None else epoch
        return shard_indices(self.num_records, self.rank, self.world_size, epoch, self.seed)

    def __iter__(self) -> Iterator[Tuple[mx.nd.NDArray, mx.nd.NDArray]]:
        order = self.indices()
        B = self.batch_size
        tasks = []
        for b in range(min(self.start_batch, len(self)), len(self)):
            spares = order[(b + 1) * B:(b + 1) * B + _SPARES]
            spares += order[:min(_SPARES - len(spares), b * B)]
            tasks.append((order[b * B:(b + 1) * B], spares,
                          (self.seed, self.epoch, self.rank, b)))
        return self._batches(tasks)


class ValLoader(_LoaderBase):
    """Validation batches: short side resized to ``ceil(eval_crop / crop_ratio)``, center crop.

    Rank ``r`` of ``k`` reads the contiguous, unpadded block of records
    ``floor(N*r/k) .. floor(N*(r+1)/k) - 1``, in order; the last batch may be smaller. Summing the
    per-rank counts (e.g. with :func:`~gluon_resnest.data.sharding.allreduce_sum`) counts every
    image exactly once. Corrupt records are dropped and listed in :attr:`skipped`.

    Args:
        rec_path: the ``.rec`` file.
        batch_size: images per batch.
        eval_crop: output side.
        rank: this worker's rank.
        world_size: number of workers.
        num_workers: decoding processes; 0 decodes in the calling process.
        mean: RGB mean subtracted.
        std: RGB standard deviation divided by.
        crop_ratio: crop side / resized short side (paper: 0.875).
        idx_path: the index file, if not beside the ``.rec``.
        ctx: context of the returned arrays.
        prefetch: batches in flight (default ``2 * num_workers``).
        mp_context: start method of the workers; default ``'fork'`` where available (instant,
            like Gluon's DataLoader; the workers use only numpy/OpenCV, never MXNet), else
            ``'spawn'`` (which needs the ``if __name__ == '__main__':`` guard in the script).
        num_classes: if given, every label must be a class index below it (checked up front
            by reading every record's header; see
            :func:`~gluon_resnest.data.records.check_labels`).
    """

    def __init__(self, rec_path: str, batch_size: int, eval_crop: int = DEFAULT_CROP, rank: int = 0,
                 world_size: int = 1, num_workers: int = 2,
                 mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, crop_ratio: float = CROP_RATIO,
                 idx_path: str | None = None, ctx: mx.Context | None = None,
                 prefetch: int | None = None, mp_context: str | None = None,
                 num_classes: int | None = None):
        super().__init__(rec_path, batch_size, num_workers, ctx, idx_path, num_classes)
        self.num_records = len(self.records)
        self.rank, self.world_size = int(rank), int(world_size)
        self.shard = eval_shard(self.num_records, self.rank, self.world_size)
        self.num_samples = len(self.shard)
        self.transform = ValTransform(eval_crop, mean, std, crop_ratio)
        shape = (self.batch_size, 3, self.transform.crop, self.transform.crop)
        self._pool = _WorkerPool(_BatchJob(self.records, self.transform, replace_corrupt=False),
                                 self.num_workers, shape,
                                 2 * self.num_workers if prefetch is None else int(prefetch),
                                 mp_context)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[Tuple[mx.nd.NDArray, mx.nd.NDArray]]:
        B = self.batch_size
        tasks = [(self.shard[i:i + B], [], None) for i in range(0, self.num_samples, B)]
        return self._batches(tasks)
