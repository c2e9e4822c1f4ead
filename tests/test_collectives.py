"""Broadcasts of the training loop (gluon_resnest.training.collectives) under horovodrun."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
HOROVODRUN = str(Path(PY).parent / 'horovodrun')

WORKER = r'''
import json, sys
import horovod.mxnet as hvd
import mxnet as mx
import numpy as np
from mxnet import gluon
from gluon_resnest.training.collectives import (broadcast_, broadcast_object,
                                                 broadcast_parameters)

hvd.init()
rank = hvd.rank()
rng = np.random.RandomState(rank)
out = {'rank': rank}

# Parameters of a network, each rank initialised differently (NaN, infinities and both zeros
# on the root must arrive unchanged).
net = gluon.nn.HybridSequential()
net.add(gluon.nn.Conv2D(8, 3, in_channels=3), gluon.nn.BatchNorm(in_channels=8),
        gluon.nn.Dense(5, in_units=8))
net.initialize(mx.init.Uniform(1.0 + rank))
params = net.collect_params()
bias = [p for n, p in params.items() if n.endswith('bias') and p.shape == (5,)][0]
if rank == 0:
    bias.set_data(mx.nd.array([np.nan, np.inf, -np.inf, -0.0, 0.0]))
before = {n: p.data().asnumpy().tobytes().hex() for n, p in params.items()}
broadcast_parameters(params, root_rank=0)
mx.nd.waitall()
out['params'] = {n: p.data().asnumpy().tobytes().hex() for n, p in params.items()}
out['params_before'] = before

# Tensors of every dtype the loop broadcasts, from a root other than 0.
tensors = {}
for dtype in ('float32', 'float16', 'float64', 'int64', 'int32', 'uint8'):
    values = (rng.uniform(-100, 100, size=(3, 5)) if 'float' in dtype
              else rng.randint(0, 200, size=(3, 5)))
    array = mx.nd.array(values, dtype=dtype)
    broadcast_(array, root_rank=1, name=f'test.{dtype}')
    tensors[dtype] = array.asnumpy().tobytes().hex()
    if rank == 1:
        tensors[dtype + '.sent'] = mx.nd.array(values, dtype=dtype).asnumpy().tobytes().hex()
out['tensors'] = tensors

# An object only the root has.
obj = {'epoch': 3, 'path': 'checkpoints/epoch-0003', 'blob': bytes(range(256)) * 40}
out['object'] = repr(broadcast_object(obj if rank == 0 else None, root_rank=0,
                                      name='test.object'))
out['object_sent'] = repr(obj)
# A file per rank: horovodrun forwards the workers' output in chunks, which can split a long
# line.
with open(f'{sys.argv[1]}/result-{rank}.json', 'w') as handle:
    json.dump(out, handle)
'''


def test_broadcasts_give_every_rank_the_roots_bits(tmp_path):
    script = tmp_path / 'worker.py'
    script.write_text(WORKER)
    proc = subprocess.run([HOROVODRUN, '-np', '2', '-H', 'localhost:2', '--gloo', PY,
                           str(script), str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {}
    for path in sorted(tmp_path.glob('result-*.json')):
        res = json.loads(path.read_text())
        results[res['rank']] = res
    assert sorted(results) == [0, 1]
    r0, r1 = results[0], results[1]
    # Parameters: rank 0's bytes, exactly, on both ranks (ranks started different).
    assert r0['params_before'] != r1['params_before']
    assert r0['params'] == r1['params'] == r0['params_before']
    # Tensors: rank 1's bytes on both ranks, every dtype.
    for dtype in ('float32', 'float16', 'float64', 'int64', 'int32', 'uint8'):
        assert r0['tensors'][dtype] == r1['tensors'][dtype] == r1['tensors'][dtype + '.sent']
    assert r0['object'] == r1['object'] == r0['object_sent']
