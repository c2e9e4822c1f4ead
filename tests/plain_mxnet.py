"""Load an export in a child process that never imports gluon_resnest: plain MXNet only."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

_CODE = r'''
import sys
import mxnet as mx
import numpy as np
prefix, batch_file, out_file = sys.argv[1:4]
batch = mx.nd.array(np.load(batch_file))
block = mx.gluon.SymbolBlock.imports(prefix + '-symbol.json', ['data'], prefix + '-0000.params')
gluon_out = block(batch).asnumpy()
symbol, args, aux = mx.model.load_checkpoint(prefix, 0)
module = mx.mod.Module(symbol, data_names=['data'], label_names=None, context=mx.cpu())
module.bind(data_shapes=[('data', batch.shape)], for_training=False)
module.set_params(args, aux)
module.forward(mx.io.DataBatch([batch]), is_train=False)
module_out = module.get_outputs()[0].asnumpy()
assert not [m for m in sys.modules if m.startswith('gluon_resnest')], 'gluon_resnest imported'
np.savez(out_file, gluon=gluon_out, module=module_out)
'''


def load_with_plain_mxnet(prefix: str, batch: np.ndarray, folder: str) -> tuple[np.ndarray,
                                                                               np.ndarray]:
    """Outputs of ``SymbolBlock.imports`` and ``mx.mod.Module`` for ``batch``, computed in a
    Python that never imports gluon_resnest (started outside the repository)."""
    batch_file = os.path.join(folder, 'plain-batch.npy')
    out_file = os.path.join(folder, 'plain-out.npz')
    np.save(batch_file, batch)
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    proc = subprocess.run([sys.executable, '-c', _CODE, prefix, batch_file, out_file],
                          capture_output=True, text=True, cwd=folder, env=env, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = np.load(out_file)
    return outputs['gluon'], outputs['module']
