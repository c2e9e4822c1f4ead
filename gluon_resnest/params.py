"""Parameter helpers shared by training, deployment and checkpoint conversion.

Parameter files are MXNet's ``save_parameters`` format: ``mx.nd.save`` of a dict keyed by the
structural names that ``Block._collect_params_with_prefix`` gives (``layer1.0.conv1.weight``).
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Mapping

import mxnet as mx
from mxnet.gluon import nn

from .models.resnest import check_parameters, load_param_file

__all__ = ['check_parameters', 'copy_parameters', 'first_context', 'load_param_file',
           'params_digest', 'save_params']


def save_params(arrays: Mapping[str, Any], output: str) -> str:
    """Write name -> array (numpy or NDArray) as a float32 ``save_parameters`` file.

    The output's folder is created. Returns the path.
    """
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    mx.nd.save(output, {k: mx.nd.array(v, dtype='float32') for k, v in arrays.items()})
    return output


def copy_parameters(source: nn.Block, target: nn.Block) -> None:
    """Copy every parameter (and BatchNorm statistic) of ``source`` into ``target``.

    Both networks must have the same structure; the names are the structural ones, so the
    two instances may have different Gluon prefixes.
    """
    own = target._collect_params_with_prefix()  # noqa: SLF001
    for name, param in source._collect_params_with_prefix().items():  # noqa: SLF001
        own[name].set_data(param.data())


def params_digest(net: nn.Block) -> str:
    """SHA-256 over every parameter's bytes, in name order (equal across ranks iff in sync)."""
    digest = hashlib.sha256()
    for name, param in sorted(net._collect_params_with_prefix().items()):  # noqa: SLF001
        digest.update(name.encode())
        digest.update(param.data().asnumpy().tobytes())
    return digest.hexdigest()


def first_context(net: nn.Block) -> mx.Context:
    """The context of ``net``'s first initialised parameter; CPU when there is none yet."""
    for param in net.collect_params().values():
        try:
            return param.list_ctx()[0]
        except RuntimeError:  # deferred initialisation: no context yet
            break
    return mx.cpu()
