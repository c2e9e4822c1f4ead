"""MXNet's OpenMP threads: one per physical core unless the user chose (gluon_resnest.threads)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gluon_resnest import threads

THREADS_PY = threads.__file__
# The module alone (importing the package runs the same configure(), and takes longer).
_CODE = '''
import importlib.util, os, sys
{first}
spec = importlib.util.spec_from_file_location('threads_under_test', {path!r})
threads = importlib.util.module_from_spec(spec)
spec.loader.exec_module(threads)
threads.configure()
print("COUNT", threads.mxnet_thread_count(), threads.configured_threads(),
      "MXNET_OMP_MAX_THREADS" in os.environ)
'''
_PACKAGE_CODE = '''
import os
import gluon_resnest
from gluon_resnest import threads
print("COUNT", threads.mxnet_thread_count(), threads.configured_threads(),
      "MXNET_OMP_MAX_THREADS" in os.environ)
'''


def _count(first: str = '', package: bool = False, **env: str) -> tuple[int, str, bool]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ('OMP_NUM_THREADS', 'MXNET_OMP_MAX_THREADS', 'HOROVOD_LOCAL_SIZE',
                          'OMPI_COMM_WORLD_LOCAL_SIZE')}
    clean.update(env)
    code = _PACKAGE_CODE if package else _CODE.format(first=first, path=THREADS_PY)
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          env=clean, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    count, configured, leaked = proc.stdout.split('COUNT ')[1].split()
    return int(count), configured, leaked == 'True'


def _plain_mxnet_count() -> int:
    """What MXNet 1.9.1 alone uses without OMP_NUM_THREADS: half the CPUs on x86."""
    code = ('import ctypes, mxnet as mx\n'
            'lib = mx.base._LIB\n'
            'get = lib._ZN5mxnet6engine6OpenMP3GetEv; get.restype = ctypes.c_void_p\n'
            'rec = lib._ZNK5mxnet6engine6OpenMP28GetRecommendedOMPThreadCountEb\n'
            'rec.argtypes = [ctypes.c_void_p, ctypes.c_bool]\n'
            'print(rec(get(), False))\n')
    env = {k: v for k, v in os.environ.items() if k not in ('OMP_NUM_THREADS',
                                                             'MXNET_OMP_MAX_THREADS')}
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stdout.split()[-1])


def test_without_the_variable_mxnet_runs_one_thread_per_physical_core():
    """Importing gluon_resnest, before MXNet, gives MXNet one thread per physical core (MXNet
    alone takes half the CPUs)."""
    cores = threads.physical_cores()
    count, configured, leaked = _count(package=True)
    assert count == cores and configured == str(cores)
    assert not leaked  # child processes decide for themselves
    assert _plain_mxnet_count() == max(1, len(os.sched_getaffinity(0)) // 2)


@pytest.mark.slow
def test_mxnet_imported_first_gets_the_same_count():
    cores = threads.physical_cores()
    assert _count(first='import mxnet')[:2] == (cores, str(cores))


def test_an_explicit_setting_is_left_alone():
    assert _count(OMP_NUM_THREADS='1')[:2] == (1, 'None')


@pytest.mark.slow
def test_an_explicit_mxnet_setting_is_left_alone():
    assert _count(MXNET_OMP_MAX_THREADS='1')[:2] == (1, 'None')


@pytest.mark.slow
def test_horovod_local_ranks_divide_the_cores():
    cores = threads.physical_cores()
    want = max(1, cores // 2)
    assert _count(HOROVOD_LOCAL_SIZE='2')[:2] == (want, str(want))
    assert _count(OMPI_COMM_WORLD_LOCAL_SIZE='2')[:2] == (want, str(want))


def test_physical_cores_count_hardware_threads_once():
    cpus = os.sched_getaffinity(0)
    assert 1 <= threads.physical_cores(cpus) <= len(cpus)
    assert threads.physical_cores({min(cpus)}) == 1


# A copy of 200,000 elements or more from numpy runs an OpenMP team on the calling thread; the
# inference entry points release it. Threads are counted in /proc (a released worker exits).
_TEAM_CODE = '''
import os, time, warnings
warnings.filterwarnings('ignore')
import mxnet as mx, numpy as np
from gluon_resnest import get_model, threads
from gluon_resnest.deploy import optimize_for_inference

def count(expect=None):
    for _ in range(200):  # a released worker takes a moment to exit
        n = len(os.listdir('/proc/self/task'))
        if n == expect:
            break
        time.sleep(0.05)
    return n

net = get_model('resnest14', classes=10)
net.initialize(mx.init.Xavier())
small = mx.nd.array(np.ones((1, 3, 64, 64), np.float32))
optimize_for_inference(net, data=small)  # the engine's threads and team exist from here
base = count()
big = mx.nd.array(np.ones((4, 3, 224, 224), np.float32))  # 602,112 elements: a team here
with_team = count(base + 1)
net(small).wait_to_read()
kept = count(with_team)  # running the network keeps the caller's team
optimize_for_inference(net, data=small)
after_entry = count(base)
big2 = mx.nd.array(np.ones((4, 3, 224, 224), np.float32))
again = count(base + 1)
released = threads.release_openmp_team()
after_release = count(base)
from gluon_resnest.deploy.fast_inference import fast_inference
fast_inference(net, small)  # the engine's threads settle in a first call
base2 = count()
big3 = mx.nd.array(np.ones((4, 3, 224, 224), np.float32))
before_fast = count(base2 + 1)
fast_inference(net, small)
after_fast = count(base2)
print("COUNTS", base, base2, with_team, kept, after_entry, again, released, after_release,
      before_fast, after_fast)
'''


@pytest.mark.slow
def test_inference_entry_points_release_the_callers_openmp_team():
    env = dict(os.environ, OMP_NUM_THREADS='2')
    proc = subprocess.run([sys.executable, '-c', _TEAM_CODE], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = proc.stdout.split('COUNTS ')[1].split()
    released = counts.pop(6)
    base, base2, with_team, kept, after_entry, again, after_release, before_fast, after_fast = \
        map(int, counts)
    # The big copy started one worker for this thread, and it stays until released.
    assert (with_team, kept) == (base + 1, base + 1)
    assert after_entry == base  # optimize_for_inference released it
    assert again == base + 1 and released == 'True' and after_release == base
    assert (before_fast, after_fast) == (base2 + 1, base2)  # and fast_inference



_SERVING_CODE = '''
import io, os, sys, time, warnings
warnings.filterwarnings('ignore')
import mxnet as mx, numpy as np
from PIL import Image
from gluon_resnest import get_model
from gluon_resnest.deploy import export_network
from gluon_resnest.deploy.serving import ImageClassifier

def count(expect=None):
    for _ in range(200):  # a released worker takes a moment to exit
        n = len(os.listdir('/proc/self/task'))
        if n == expect:
            break
        time.sleep(0.05)
    return n

net = get_model('resnest14', classes=3, stem_width=16)
net.initialize(mx.init.Xavier())
prefix = os.path.join(sys.argv[1], 'tiny')
export_network(net, prefix, input_size=288, classes=['a', 'b', 'c'])
classifier = ImageClassifier(prefix)
png = io.BytesIO()
Image.fromarray(np.full((300, 320, 3), 128, np.uint8)).save(png, format='PNG')
classifier.classify([classifier.transform(png.getvalue())])  # the engine's threads settle
base = count()
image = classifier.transform(png.getvalue())  # 3 x 288 x 288 = 248,832 elements: a team here
with_team = count(base + 1)
classifier.classify([image])
print("COUNTS", base, with_team, count(base))
'''


@pytest.mark.slow
def test_the_model_servers_classifier_releases_the_callers_openmp_team(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='2')
    proc = subprocess.run([sys.executable, '-c', _SERVING_CODE, str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    base, with_team, after = map(int, proc.stdout.split('COUNTS ')[1].split())
    assert (with_team, after) == (base + 1, base)
