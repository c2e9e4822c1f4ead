"""ONNX: convert an export with a dynamic batch axis, and check it against MXNet."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from typing import Any, Iterator, Sequence

import mxnet as mx
import numpy as np

from .. import native
from ..atomic import FileSet, make_folder, write_failure
from ..errors import InputError
from .export import load_exported, read_export
from .graph import Graph
from .meta import check_export, read_meta, verify_export

__all__ = ['MXNET_ONNX_OPSET', 'export_onnx', 'initializers_as_constants', 'onnx_compatible_symbol',
           'verify_onnx']

logger = logging.getLogger(__name__)


def export_onnx(prefix: str, output: str, epoch: int = 0,
                input_size: int | None = None) -> str:
    """Convert an export to ONNX with a dynamic batch axis; return the ONNX file name.

    The graph's only input is the image batch: the weights are initializers, constants that
    runtimes fold and fuse (see :func:`initializers_as_constants`). The meta data of the export
    is copied into the ONNX model's ``metadata_props`` (key ``gluon_resnest``, JSON).
    """
    import onnx  # local: optional dependency

    symbol_file, params_file = check_export(prefix, epoch)
    meta = read_meta(prefix)
    verify_export(prefix, epoch, meta)
    size = int(input_size or meta['input_size'])
    channels = int(meta.get('in_channels') or 3)
    symbol, saved = read_export(symbol_file, params_file)
    if meta.get('quantized') or meta.get('fast') or native.uses_native(symbol.tojson()):
        kind = 'an INT8' if meta.get('quantized') else 'a --fast'
        raise InputError(f'this is {kind} export: ONNX conversion needs the plain float32 '
                         f'export (tools/export.py without --fast)', symbol_file)
    folder = os.path.dirname(os.path.abspath(output))
    make_folder(folder)
    if os.path.isdir(output):
        raise InputError('the ONNX output is a folder; give a file name', output)
    symbol = onnx_compatible_symbol(symbol, (channels, size, size))
    params = {k.split(':', 1)[-1]: v for k, v in saved.items()}
    with FileSet(stale=[output]) as files:
        temporary = files.temp(output)
        try:
            with _onnx_compat(onnx):
                mx.onnx.export_model(symbol, params, in_shapes=[(1, channels, size, size)],
                                     in_types=[np.float32], onnx_file_path=temporary,
                                     dynamic=True,
                                     dynamic_input_shapes=[(None, channels, size, size)])
        except OSError as err:
            raise write_failure(err, output) from None
        model = initializers_as_constants(onnx.load(temporary))
        onnx.checker.check_model(model)
        entry = model.metadata_props.add()
        entry.key = 'gluon_resnest'
        entry.value = json.dumps(dict(meta, input_size=size))
        files.run(output, lambda path: onnx.save(model, path))
        files.commit()
    return output


def initializers_as_constants(model: Any) -> Any:
    """Make an ONNX model's weights plain initializers; return the model (changed in place).

    MXNet's exporter lists every weight both as an initializer and as a graph input, which
    declares it overridable at run time: runtimes then may not fold or fuse it (onnxruntime
    warns for each). It also leaves initializers no node reads. Both are removed, so the graph
    inputs are the data alone.
    """
    graph = model.graph
    weights = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in weights]
    del graph.input[:]
    graph.input.extend(inputs)
    read = {name for node in graph.node for name in node.input}
    read.update(value.name for value in graph.output)
    used = [tensor for tensor in graph.initializer if tensor.name in read]
    dropped = len(graph.initializer) - len(used)
    del graph.initializer[:]
    graph.initializer.extend(used)
    logger.debug('ONNX graph: %d inputs, %d initializers (%d unused ones dropped)',
                 len(inputs), len(used), dropped)
    return model


def onnx_compatible_symbol(symbol: mx.sym.Symbol, sample_shape: Sequence[int],
                           input_name: str = 'data') -> mx.sym.Symbol:
    """Rewrite ``Reshape`` ops whose shape uses MXNet's special codes (-2, -3, -4) for ONNX.

    MXNet 1.9's ONNX exporter rejects most of those codes, which the Split-Attention block uses
    to split and merge the radix axis. For a fixed image size every such reshape has a known
    output shape; it is written as ``(0, d1, d2, ...)`` (0: copy the batch axis), so the ONNX
    graph keeps a dynamic batch. Everything else is left as it is.

    Args:
        symbol: The network's symbol.
        sample_shape: ``(C, H, W)`` of one input.
        input_name: Name of the data input.
    """
    batch = 7  # a batch size no other axis is likely to equal, to tell the batch axis apart
    internals = symbol.get_internals()
    _, out_shapes, _ = internals.infer_shape(**{input_name: (batch, *sample_shape)})
    shapes = dict(zip(internals.list_outputs(), out_shapes))
    graph = Graph(symbol)
    changed = 0
    for i, node in enumerate(graph.nodes):
        attrs = node.get('attrs', {})
        target = [int(v) for v in re.findall(r'-?\d+', attrs.get('shape', ''))]
        if node['op'] == 'Reshape' and (any(v in (-2, -3, -4) for v in target)
                                        or attrs.get('reverse') == 'True'):
            out = shapes[f'{node["name"]}_output']
            if out[0] != batch:
                raise ValueError(f'cannot make reshape {node["name"]!r} ONNX-compatible: its '
                                 f'output {out} does not keep the batch axis first')
            # The old nodes are this pass's own parse of the symbol: edit them in place.
            attrs['shape'] = str(tuple([0, *out[1:]]))
            attrs.pop('reverse', None)
            changed += 1
        graph.keep(i)
    logger.debug('%d reshapes rewritten with static shapes for ONNX', changed)
    return graph.to_symbol()


#: Highest ONNX opset MXNet 1.9's exporter has translations for.
MXNET_ONNX_OPSET = 13


@contextlib.contextmanager
def _onnx_compat(onnx: Any) -> Iterator[None]:
    """Let MXNet 1.9's ONNX exporter run with a current onnx package.

    The exporter (i) reads ``onnx.mapping``, which onnx >= 1.19 removed: the two tables it uses
    are rebuilt from ``onnx.helper``; (ii) stamps the model with the package's latest opset,
    ``onnx.defs.onnx_opset_version()``, although its translations stop at opset 13 (e.g. it
    writes ReduceMean's ``axes`` as an attribute, an input since opset 18), so the result would
    fail the checker: that function, and the checker's default context, answer
    :data:`MXNET_ONNX_OPSET` while the export runs. All is restored afterwards.
    """
    import types

    added_mapping = not hasattr(onnx, 'mapping')
    if added_mapping:
        np_to_onnx = {}
        for name in ('float32', 'float16', 'float64', 'int8', 'int16', 'int32', 'int64',
                     'uint8', 'uint16', 'uint32', 'uint64', 'bool'):
            np_to_onnx[np.dtype(name)] = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(name))
        mapping = types.ModuleType('onnx.mapping')
        mapping.NP_TYPE_TO_TENSOR_TYPE = np_to_onnx
        mapping.TENSOR_TYPE_TO_NP_TYPE = {v: k for k, v in np_to_onnx.items()}
        onnx.mapping = mapping
    latest = onnx.defs.onnx_opset_version
    opset = min(latest(), MXNET_ONNX_OPSET)
    checker_context = onnx.checker.DEFAULT_CONTEXT
    checker_opsets = dict(checker_context.opset_imports)
    onnx.defs.onnx_opset_version = lambda: opset
    checker_context.opset_imports = dict(checker_opsets, **{'': opset})
    try:
        yield
    finally:
        onnx.defs.onnx_opset_version = latest
        checker_context.opset_imports = checker_opsets
        if added_mapping:
            del onnx.mapping


def verify_onnx(prefix: str, onnx_file: str, epoch: int = 0, input_size: int | None = None,
                batch_size: int = 2, seed: int = 0) -> tuple[float, float]:
    """Run an ONNX file with onnxruntime and the export with MXNet on the same random batch.

    The input is uniform in [0, 255] for exports with embedded preprocessing, standard normal
    otherwise.

    Returns:
        ``(max abs difference, largest abs MXNet output)``.
    """
    import onnxruntime

    net, meta = load_exported(prefix, epoch)
    size = int(input_size or meta['input_size'])
    rng = np.random.RandomState(seed)
    shape = (batch_size, int(meta.get('in_channels') or 3), size, size)
    data = (rng.uniform(0, 255, shape) if meta['preprocess'] else rng.randn(*shape))
    data = data.astype(np.float32)
    expected = net(mx.nd.array(data)).asnumpy()
    session = onnxruntime.InferenceSession(onnx_file, providers=['CPUExecutionProvider'])
    actual = session.run(None, {session.get_inputs()[0].name: data})[0]
    if actual.shape != expected.shape:
        raise ValueError(f'ONNX output shape {actual.shape} differs from MXNet\'s '
                         f'{expected.shape}')
    return float(np.abs(actual - expected).max()), float(np.abs(expected).max())
