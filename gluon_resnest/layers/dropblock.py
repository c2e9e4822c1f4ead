"""DropBlock (Ghiasi et al., 2018) that stays correct once hybridized."""
from __future__ import annotations

import json

import mxnet as mx
from mxnet import autograd
from mxnet.gluon import nn

#: When a DropBlock is part of a traced (symbolic) graph; see :class:`DropBlock`.
GRAPH_MODES = ('auto', 'training', 'always')

# Attribute marking, in a traced graph, the node that holds a DropBlock's probability (its value
# is the block size): :func:`set_drop_prob` rewrites those nodes in ``SymbolBlock`` graphs.
_PROB_NODE_ATTR = '__gluon_resnest_dropblock_size__'


class DropBlock(nn.HybridBlock):
    """Drops contiguous ``block_size`` x ``block_size`` regions of a feature map while training.

    Unlike GluonCV's DropBlock this one is safe in a static graph:

    * the training/inference switch happens inside the graph (a ``Dropout`` of a constant is
      exactly 0 or 2 while training and exactly 1 at inference), so one traced graph serves both
      modes and inference is an exact identity;
    * the seed rate is computed from the map size counted at run time, so one graph serves any
      input size.

    The probability is a plain attribute baked into the traced graph; change it with
    :func:`set_drop_prob`, which also discards the cached graphs so the next call re-traces, and
    rewrites the probability inside ``SymbolBlock`` graphs (which cannot re-trace, e.g. the
    backbone of GluonCV's FPN detectors).

    Args:
        drop_prob: Probability of dropping each activation (the paper's ``keep_prob = 1 - p``).
        block_size: Side of the dropped square; odd, so the mask keeps the map's size.
        graph: What a traced graph holds. ``'auto'``: the block, unless ``drop_prob`` is 0 at
            tracing. ``'training'``: the same, and nothing when traced outside training, as
            GluonCV's DropBlock (which decides in Python) does. ``'always'``: the block even
            at probability 0, so that :func:`set_drop_prob` can raise it in a graph that is
            never re-traced.
        shared_mask: One mask for the whole batch, as the authors' DropBlock (``resnest.gluon``,
            used by their training script) draws it, instead of one per sample; the kept part
            is scaled up by the mask's kept fraction.
    """

    def __init__(self, drop_prob: float = 0.0, block_size: int = 3, graph: str = 'auto',
                 shared_mask: bool = False, **kwargs) -> None:
        # Not super(): a subclass that also derives from GluonCV's DropBlock (see
        # gluon_resnest.gluoncv_bridge) must not run GluonCV's constructor.
        nn.HybridBlock.__init__(self, **kwargs)
        if block_size < 1 or block_size % 2 == 0:
            raise ValueError(f'block_size must be a positive odd number, got {block_size}')
        if graph not in GRAPH_MODES:
            raise ValueError(f'graph must be one of {GRAPH_MODES}, got {graph!r}')
        self.block_size = block_size
        self.graph = graph
        self.shared_mask = bool(shared_mask)
        self.drop_prob = _check_prob(drop_prob)

    def hybrid_forward(self, F, x):  # noqa: N803 - MXNet's convention
        symbolic = F is mx.sym
        if not (symbolic and self.graph == 'always'):
            if self.drop_prob <= 0:
                return x
            if symbolic and self.graph == 'training' and not autograd.is_training():
                return x
        bs = self.block_size
        # Nothing of the mask is differentiated. The map's height and width are counted with
        # float ops on slice_axis of x: in MXNet 1.9 graphs the backward passes of shape_array
        # and of a multi-axis slice crash (SIGFPE) even behind BlockGrad.
        ref = F.BlockGrad(x)
        plane = F.slice_axis(F.slice_axis(ref, axis=0, begin=0, end=1), axis=1, begin=0, end=1)
        column = F.ones_like(F.slice_axis(plane, axis=3, begin=0, end=1))
        row = F.ones_like(F.slice_axis(plane, axis=2, begin=0, end=1))
        height = F.sum(column, axis=(2, 3), keepdims=True)       # (1, 1, 1, 1)
        width = F.sum(row, axis=(2, 3), keepdims=True)
        one = F.ones_like(height)
        training = F.abs(F.Dropout(one, p=0.5) - 1)  # 1 while training, 0 at inference
        valid = F.maximum(height - bs + 1, 1) * F.maximum(width - bs + 1, 1)
        # The one node that holds the probability, marked so that set_drop_prob finds it.
        node = {'name': 'drop_prob', 'attr': {_PROB_NODE_ATTR: str(bs)}} if symbolic else {}
        gamma = F._internal._mul_scalar(training, scalar=self.drop_prob / bs ** 2, **node)
        gamma = gamma * height * width / valid
        # The noise: one (1, C, H, W) sample shared by the batch, or one per sample.
        noise = F.slice_axis(ref, axis=0, begin=0, end=1) if self.shared_mask else ref
        seeds = F.broadcast_lesser(F.random.uniform_like(noise), gamma)
        dropped = F.Pooling(seeds, kernel=(bs, bs), stride=(1, 1), pad=(bs // 2, bs // 2),
                            pool_type='max')
        mask = F.BlockGrad(1 - dropped)
        keep = F.maximum(F.mean(mask, axis=(1, 2, 3), keepdims=True), 1e-6)
        if self.shared_mask:
            return F.broadcast_div(F.broadcast_mul(x, mask), keep)
        return F.broadcast_div(x * mask, keep)

    def __repr__(self) -> str:
        shared = ', shared_mask=True' if self.shared_mask else ''
        return (f'{type(self).__name__}(drop_prob={self.drop_prob}, '
                f'block_size={self.block_size}, graph={self.graph!r}{shared})')


def _check_prob(p: float) -> float:
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f'drop probability must be in [0, 1), got {p}')
    return p


def set_traced_drop_prob(block: nn.SymbolBlock, drop_prob: float) -> int:
    """Set the probability of the DropBlocks traced into ``block``'s graph.

    A ``SymbolBlock`` (GluonCV's FPN feature extractor, ``SymbolBlock.imports``) holds a graph
    traced once and never re-traced; this rewrites the probability node of each of our
    DropBlocks in it and drops the compiled graph, so the next call uses the new value.

    Returns:
        How many DropBlocks the graph holds (0 leaves the block untouched).
    """
    drop_prob = _check_prob(drop_prob)
    traced = block._cached_graph  # pylint: disable=protected-access
    if not traced:
        return 0
    inputs, out = traced
    graph = json.loads(out.tojson())
    count = 0
    for node in graph['nodes']:
        size = node.get('attrs', {}).get(_PROB_NODE_ATTR)
        if size is not None:
            node['attrs']['scalar'] = repr(drop_prob / int(size) ** 2)
            count += 1
    if count:
        block._cached_graph = inputs, mx.sym.load_json(json.dumps(graph))  # pylint: disable=protected-access
        block._clear_cached_op()  # pylint: disable=protected-access
    return count


def set_block_drop_prob(block: nn.Block, drop_prob: float) -> int:
    """Set the probability of ``block`` itself if it is (or holds the graph of) DropBlocks.

    The per-block step of :func:`set_drop_prob` (``net.apply`` visits every block): a
    :class:`DropBlock` takes the value, a ``SymbolBlock`` has its traced DropBlocks rewritten,
    and every hybridized block drops its cached graph so the next call re-traces.

    Returns:
        How many DropBlocks were set.
    """
    drop_prob = _check_prob(drop_prob)
    count = 0
    if isinstance(block, DropBlock):
        block.drop_prob = drop_prob
        count = 1
    if isinstance(block, nn.SymbolBlock):
        count += set_traced_drop_prob(block, drop_prob)
    elif isinstance(block, nn.HybridBlock):
        block._clear_cached_op()  # pylint: disable=protected-access
    return count


def set_drop_prob(net: nn.Block, drop_prob: float) -> int:
    """Set the probability of every :class:`DropBlock` in ``net``; return how many were set.

    Cached graphs of every hybridized block are cleared, so the new value takes effect on the
    next forward pass (which re-traces once); DropBlocks inside ``SymbolBlock`` graphs are
    rewritten in place (see :func:`set_traced_drop_prob`). Parameters and trainer state are
    untouched.
    """
    drop_prob = _check_prob(drop_prob)
    count = 0

    def visit(block: nn.Block) -> None:
        nonlocal count
        count += set_block_drop_prob(block, drop_prob)

    net.apply(visit)
    return count
