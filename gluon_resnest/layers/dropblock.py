"""DropBlock (Ghiasi et al., 2018) that stays correct once hybridized."""
from __future__ import annotations

from mxnet.gluon import nn


class DropBlock(nn.HybridBlock):
    """Drops contiguous ``block_size`` x ``block_size`` regions of a feature map while training.

    Unlike GluonCV's DropBlock this one is safe in a static graph:

    * the training/inference switch happens inside the graph (a ``Dropout`` of a constant is
      exactly 0 or 2 while training and exactly 1 at inference), so one traced graph serves both
      modes and inference is an exact identity;
    * the seed rate is computed from the map size counted at run time, so one graph serves any
      input size.

    The probability is a plain attribute baked into the traced graph; change it with
    :func:`set_drop_prob`, which also discards the cached graphs so the next call re-traces.
    With ``drop_prob == 0`` the block traces to nothing at all.

    Args:
        drop_prob: Probability of dropping each activation (the paper's ``keep_prob = 1 - p``).
        block_size: Side of the dropped square; odd, so the mask keeps the map's size.
    """

    def __init__(self, drop_prob: float = 0.0, block_size: int = 3, **kwargs) -> None:
        super().__init__(**kwargs)
        if block_size < 1 or block_size % 2 == 0:
            raise ValueError(f'block_size must be a positive odd number, got {block_size}')
        self.block_size = block_size
        self.drop_prob = _check_prob(drop_prob)

    def hybrid_forward(self, F, x):  # noqa: N803 - MXNet's convention
        if self.drop_prob <= 0:
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
        gamma = self.drop_prob / bs ** 2 * height * width / valid
        gamma = gamma * training
        seeds = F.broadcast_lesser(F.random.uniform_like(ref), gamma)
        dropped = F.Pooling(seeds, kernel=(bs, bs), stride=(1, 1), pad=(bs // 2, bs // 2),
                            pool_type='max')
        mask = F.BlockGrad(1 - dropped)
        keep = F.maximum(F.mean(mask, axis=(1, 2, 3), keepdims=True), 1e-6)
        return F.broadcast_div(x * mask, keep)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(drop_prob={self.drop_prob}, block_size={self.block_size})'


def _check_prob(p: float) -> float:
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f'drop probability must be in [0, 1), got {p}')
    return p


def set_drop_prob(net: nn.Block, drop_prob: float) -> int:
    """Set the probability of every :class:`DropBlock` in ``net``; return how many were set.

    Cached graphs of every hybridized block are cleared, so the new value takes effect on the
    next forward pass (which re-traces once). Parameters and trainer state are untouched.
    """
    drop_prob = _check_prob(drop_prob)
    count = 0

    def visit(block: nn.Block) -> None:
        nonlocal count
        if isinstance(block, DropBlock):
            block.drop_prob = drop_prob
            count += 1
        if isinstance(block, nn.HybridBlock):
            block._clear_cached_op()  # pylint: disable=protected-access

    net.apply(visit)
    return count
