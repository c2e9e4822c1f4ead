"""BatchNorm followed by ReLU as one operator (MXNet's oneDNN ``BatchNormWithReLU``).

A network's blocks name the (normalisation, ReLU) pairs that follow each other directly
(``norm_relu_pairs()``); :func:`fuse_norm_relu` makes each pair whose normalisation is MXNet's
plain BatchNorm run as ``_contrib_BatchNormWithReLU``: the BatchNorm applies the ReLU in the same
pass, forward and backward, and the :class:`ReLU` after it passes its input through. Parameters
and their names do not change, nor does the result: the operator computes ``relu(batch_norm(x))``.
The fused graph needs MXNet's oneDNN build; :func:`unfused_norm_relu` traces a network without it
(for export, quantization and the inference graph passes).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

from mxnet.gluon import nn

__all__ = ['ReLU', 'fuse_norm_relu', 'fusable', 'unfused_norm_relu']


class ReLU(nn.Activation):
    """``nn.Activation('relu')`` (same operator and name) that becomes the identity while the
    BatchNorm before it applies the ReLU itself (see :func:`fuse_norm_relu`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('relu', **kwargs)
        self.in_norm = False

    def hybrid_forward(self, F, x):  # noqa: N803 - MXNet's convention
        if self.in_norm:
            return x
        return super().hybrid_forward(F, x)


def fusable(norm: nn.Block, relu: nn.Block) -> bool:
    """Whether ``norm`` is MXNet's own BatchNorm (not a subclass with its own forward, such as
    a synchronised BatchNorm) and ``relu`` a :class:`ReLU`."""
    return (isinstance(norm, nn.BatchNorm) and isinstance(relu, ReLU) and
            type(norm).hybrid_forward is nn.BatchNorm.hybrid_forward)


def _pairs(net: nn.Block) -> Iterator[tuple[nn.Block, nn.Block]]:
    pairs = getattr(net, 'norm_relu_pairs', None)
    if callable(pairs):
        yield from pairs()
    for child in net._children.values():  # pylint: disable=protected-access
        yield from _pairs(child)


def fuse_norm_relu(net: nn.Block, fused: bool = True) -> int:
    """Run every fusable (BatchNorm, ReLU) pair of ``net`` as one operator (or, with
    ``fused=False``, as two again); returns the number of pairs changed to that state.

    A hybridized network keeps the graph it already built until it is hybridized again.
    """
    count = 0
    for norm, relu in _pairs(net):
        if fusable(norm, relu):
            count += int(norm.fuse_relu != fused)
            norm.fuse_relu = fused
            relu.in_norm = fused
    return count


@contextlib.contextmanager
def unfused_norm_relu(net: nn.Block) -> Iterator[nn.Block]:
    """Within the block, ``net`` traces (``net(mx.sym.var('data'))``) with separate BatchNorm
    and ReLU operators; the fused pairs are restored afterwards."""
    fused = [(norm, relu) for norm, relu in _pairs(net)
             if fusable(norm, relu) and norm.fuse_relu]
    try:
        for norm, relu in fused:
            norm.fuse_relu = relu.in_norm = False
        yield net
    finally:
        for norm, relu in fused:
            norm.fuse_relu = relu.in_norm = True
