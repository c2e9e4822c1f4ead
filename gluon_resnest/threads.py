"""MXNet's OpenMP threads: one per physical core this process may run on, unless the user chose.

MXNet 1.9.1 sizes its OpenMP threads once, when ``libmxnet.so`` is loaded
(``src/engine/openmp.cc``): with ``OMP_NUM_THREADS`` (or ``MXNET_OMP_MAX_THREADS``) set it uses
that; otherwise, on x86, half of ``omp_get_num_procs()`` (the CPUs the process may run on), on
the guess that every core runs two hardware threads. Where each core runs one (most cloud
machines), half of the cores stay idle: a float32 ResNeSt-50 ran at half the speed.

:func:`configure` runs when :mod:`gluon_resnest` is imported. Where neither variable is set, it
gives MXNet one thread per physical core of the process's CPU affinity, divided among the local
ranks under ``horovodrun``/``mpirun`` (``HOROVOD_LOCAL_SIZE``, ``OMPI_COMM_WORLD_LOCAL_SIZE``),
and says so in one log line (:func:`report`). An explicit setting is left alone. Imported
before MXNet, it sets ``MXNET_OMP_MAX_THREADS`` while ``libmxnet.so`` loads (then removes it
again, so child processes decide for themselves); imported after, it sets the same maximum in
MXNet's OpenMP settings (:func:`_set_mxnet_thread_max`, checked before it writes), which
MXNet's CPU worker threads read when they start, so it takes effect when no MXNet operator ran
yet.
"""
from __future__ import annotations

import ctypes
import logging
import os
import sys

__all__ = ['configure', 'configured_threads', 'local_ranks', 'mxnet_thread_count',
           'physical_cores', 'release_openmp_team', 'report']

logger = logging.getLogger(__name__)

#: Variables through which the user chooses MXNet's thread count; either one is left alone.
USER_KEYS = ('OMP_NUM_THREADS', 'MXNET_OMP_MAX_THREADS')
_LOCAL_SIZE_KEYS = ('HOROVOD_LOCAL_SIZE', 'OMPI_COMM_WORLD_LOCAL_SIZE')
_state: dict[str, int | None] = {'threads': None}
_pending: list[str] = []


def _read(path: str) -> str | None:
    try:
        with open(path, encoding='ascii') as handle:
            return handle.read().strip()
    except OSError:
        return None


def physical_cores(cpus: set[int] | None = None) -> int:
    """Physical cores among ``cpus`` (default: the CPUs this process may run on); hardware
    threads of one core count once (Linux's CPU topology; each CPU is a core elsewhere)."""
    if cpus is None:
        try:
            cpus = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            cpus = set(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topology = f'/sys/devices/system/cpu/cpu{cpu}/topology'
        package = _read(f'{topology}/physical_package_id')
        core = _read(f'{topology}/core_id')
        cores.add((package, core) if package is not None and core is not None else ('cpu', cpu))
    return max(1, len(cores))


def local_ranks() -> int:
    """Processes of this job on this machine (1 outside ``horovodrun``/``mpirun``)."""
    for key in _LOCAL_SIZE_KEYS:
        value = os.environ.get(key, '')
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def configured_threads() -> int | None:
    """The thread count :func:`configure` gave MXNet, or None when it left MXNet alone."""
    return _state['threads']


def _openmp() -> tuple[ctypes.CDLL, int]:
    import mxnet as mx

    lib = mx.base._LIB  # pylint: disable=protected-access
    get = lib._ZN5mxnet6engine6OpenMP3GetEv  # mxnet::engine::OpenMP::Get()
    get.restype = ctypes.c_void_p
    return lib, int(get())


def mxnet_thread_count() -> int:
    """MXNet's recommended OpenMP thread count for its operators
    (``OpenMP::GetRecommendedOMPThreadCount``, as this thread sees it)."""
    lib, singleton = _openmp()
    recommended = lib._ZNK5mxnet6engine6OpenMP28GetRecommendedOMPThreadCountEb
    recommended.restype = ctypes.c_int
    recommended.argtypes = [ctypes.c_void_p, ctypes.c_bool]
    return int(recommended(singleton, False))


def _set_mxnet_thread_max(threads: int) -> bool:
    """Set MXNet 1.9.1's ``OpenMP::omp_thread_max_`` after ``libmxnet.so`` was loaded; False
    (nothing written) when the object does not look as assumed.

    Assumption: MXNet 1.9.1's ``mxnet::engine::OpenMP`` is ``{bool enabled_; int
    omp_thread_max_; int reserve_cores_; bool omp_num_threads_set_in_environment_}`` with the
    maximum at byte 4; checked against the maximum MXNet reports through its own function.
    """
    import mxnet as mx

    if mx.__version__ != '1.9.1':
        return False
    try:
        lib, singleton = _openmp()
        fields = (ctypes.c_int32 * 3).from_address(singleton)
        flags = (ctypes.c_uint8 * 16).from_address(singleton)
        current = mxnet_thread_count()
    except (AttributeError, OSError, ValueError):
        return False
    if flags[0] != 1 or flags[12] != 0 or fields[1] != current or not 0 < current <= 4096:
        return False
    fields[1] = threads
    lib.MXSetNumOMPThreads(ctypes.c_int(threads))  # this thread's OpenMP default
    return True


def configure() -> int | None:
    """Give MXNet one OpenMP thread per physical core (see the module text); the count, or
    None when the user chose (``OMP_NUM_THREADS``/``MXNET_OMP_MAX_THREADS``) or MXNet's
    settings could not be changed."""
    if _state['threads'] is not None:
        return _state['threads']
    if any(key in os.environ for key in USER_KEYS):
        return None
    ranks = local_ranks()
    threads = max(1, physical_cores() // ranks)
    if 'mxnet' not in sys.modules:
        os.environ['MXNET_OMP_MAX_THREADS'] = str(threads)
        try:
            import mxnet  # noqa: F401 - libmxnet.so reads the variable as it loads
        finally:
            del os.environ['MXNET_OMP_MAX_THREADS']
    elif not _set_mxnet_thread_max(threads):
        logger.info('gluon_resnest: OMP_NUM_THREADS is not set and MXNet\'s OpenMP settings '
                    'could not be changed; set OMP_NUM_THREADS to choose the thread count')
        return None
    _state['threads'] = threads
    per_rank = f' ({ranks} local ranks share the cores)' if ranks > 1 else ''
    _pending.append(f'gluon_resnest: OMP_NUM_THREADS is not set: MXNet runs {threads} OpenMP '
                    f'threads, one per physical core this process may run on{per_rank}')
    if logging.getLogger().hasHandlers():
        report()
    return threads


def release_openmp_team() -> bool:
    """Release the OpenMP worker threads that the calling thread started, if any; True when the
    runtime released them (or the thread had none), False where it cannot (MXNet's OpenMP
    runtime has no ``omp_pause_resource_all``: OpenMP before 5.0).

    MXNet runs its operators on its engine's worker thread, whose OpenMP team does the work.
    The calling thread gets a team of its own the first time it runs a parallel region: MXNet
    copies arrays of 200,000 elements or more in parallel on the caller (``mx.nd.array`` of a
    batch of 16 images, ``asnumpy``). From then on the process holds more OpenMP threads than
    it may use CPUs, and GNU OpenMP shortens the time a waiting thread spins before it sleeps
    from about 300,000 checks to 100: the engine's team then falls asleep between the ~190
    parallel regions of a batch-1 image, and waking it costs more than the work of the small
    ones. Releasing the caller's idle team (``omp_pause_resource_all(omp_pause_soft)``, which
    affects the calling thread's team only) restores the spinning; the team is created again
    the next time this thread runs a parallel region. ``fast_inference``,
    ``optimize_for_inference``, ``quantize_network`` and the export loaders call this before
    they return, and the model server's classifier before each forward pass.
    """
    import mxnet as mx

    try:
        # Looked up from libmxnet.so: the OpenMP runtime MXNet's operators use (a process may
        # hold other copies, e.g. one bundled with scikit-learn).
        lib = mx.base._LIB  # pylint: disable=protected-access
        pause = lib.omp_pause_resource_all
        in_parallel = lib.omp_in_parallel
    except AttributeError:
        return False
    pause.restype = ctypes.c_int
    pause.argtypes = [ctypes.c_int]
    if in_parallel():
        return False
    return pause(1) == 0  # omp_pause_soft


def report() -> None:
    """Log what :func:`configure` did, once per process (at import, logging is often not set
    up yet: the inference entry points call this)."""
    while _pending:
        logger.info(_pending.pop())
