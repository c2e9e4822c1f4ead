"""Split-Attention convolution in the radix-major layout (paper §3.2, Figure 4)."""
from __future__ import annotations

from typing import Any, Callable

from mxnet.gluon import nn

from .norm_relu import ReLU, fuse_norm_relu


def attention_channels(in_channels: int, radix: int, reduction: int = 4, floor: int = 32) -> int:
    """Width of the attention MLP: ``max(in_channels * radix // reduction, floor)``."""
    return max(in_channels * radix // reduction, floor)


class SplitAttention(nn.HybridBlock):
    """Split-Attention unit (paper eqs. 1-3) with a single grouped convolution for all splits.

    The ``radix * cardinality`` feature-map groups are produced by one grouped convolution with
    ``channels * radix`` outputs, laid out radix-major: with ``w = channels // cardinality``,
    split ``r`` of cardinal group ``k`` holds the output channels ``r * channels + k * w + [0, w)``.
    The attention MLP is two grouped 1x1 convolutions (``groups = cardinality``) whose output is
    cardinal-major, ``k * radix * width + r * width + c``, as in GluonCV and the authors' code, so
    that their weights load unchanged.

    Child names (``conv``, ``bn``, ``fc1``, ``bn1``, ``fc2``) are part of the checkpoint format.
    The children are created in the enclosing name scope, in GluonCV's order, so that inside a
    network their parameter and operator names are GluonCV's (``..._conv1_weight``,
    ``..._relu1_fwd``): GluonCV's detectors address their parameters and outputs by those names.

    Args:
        channels: Output channels (``C`` of the paper).
        kernel_size: Kernel of the grouped convolution.
        strides: Stride of the grouped convolution.
        padding: Padding of the grouped convolution.
        dilation: Dilation of the grouped convolution.
        radix: Number of splits per cardinal group (``R``); 1 uses a sigmoid gate.
        cardinality: Number of cardinal groups (``K``).
        in_channels: Input channels.
        norm_layer: Normalisation layer class.
        norm_kwargs: Extra arguments of ``norm_layer``.
        weight_initializer: Initializer of the convolution weights.
        native: Compute the weighted sum of the splits with gluon_resnest's native operator
            ``gluon_resnest_sa_sum`` (:mod:`gluon_resnest.native`, loaded before the first
            forward), forward and backward in one pass each; with ``pool`` set it also applies
            the 3x3, stride 2 average pooling of an avd block. Same parameters and outputs;
            for radix > 1.
    """

    def __init__(self, channels: int, kernel_size: int = 3, strides: int = 1, padding: int = 1,
                 dilation: int = 1, radix: int = 2, cardinality: int = 1, in_channels: int = 0,
                 norm_layer: Callable[..., nn.HybridBlock] = nn.BatchNorm,
                 norm_kwargs: dict[str, Any] | None = None, weight_initializer: Any = None,
                 native: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if radix < 1 or cardinality < 1:
            raise ValueError(f'radix and cardinality must be >= 1, got {radix}, {cardinality}')
        if channels % cardinality:
            raise ValueError(f'channels={channels} is not divisible by cardinality={cardinality}')
        norm_kwargs = dict(norm_kwargs or {})
        inter = attention_channels(in_channels, radix)
        self.channels = channels
        self.native = native and radix > 1
        self.pool = False  # native only: the enclosing block's avd pooling, done here
        self.radix = radix
        self.cardinality = cardinality
        self.conv = nn.Conv2D(channels * radix, kernel_size, strides, padding, dilation,
                              groups=radix * cardinality, use_bias=False,
                              in_channels=in_channels, weight_initializer=weight_initializer)
        self.bn = norm_layer(in_channels=channels * radix, **norm_kwargs)
        self.relu = ReLU()
        self.fc1 = nn.Conv2D(inter, 1, in_channels=channels, groups=cardinality,
                             weight_initializer=weight_initializer)
        self.bn1 = norm_layer(in_channels=inter, **norm_kwargs)
        self.relu1 = ReLU()
        self.fc2 = nn.Conv2D(channels * radix, 1, in_channels=inter, groups=cardinality,
                             weight_initializer=weight_initializer)
        if native:
            fuse_norm_relu(self)

    def norm_relu_pairs(self) -> list[tuple[nn.Block, nn.Block]]:
        """The (normalisation, ReLU) pairs after ``conv`` and ``fc1`` (see
        :func:`~gluon_resnest.layers.fuse_norm_relu`)."""
        return [(self.bn, self.relu), (self.bn1, self.relu1)]

    def hybrid_forward(self, F, x):  # noqa: N803 - MXNet's convention
        # Every full-size tensor goes through oneDNN-backed operators (Convolution, BatchNorm,
        # Activation, Pooling, elemwise_add) or a single elementwise pass; the 5-D reshapes and
        # the reduction over the radix axis of the textbook formulation cost more on CPU than
        # the convolution itself (see the README, "Where the time goes").
        x = self.relu(self.bn(self.conv(x)))
        # Pool before summing the splits: the mean is linear, and pooling the (N, R*C, H, W)
        # map once is cheaper than materialising the (N, C, H, W) sum of the splits.
        if self.native:
            # Pooled and summed over the splits in one native pass (MXNet's oneDNN global
            # pooling backward falls to a slow kernel when its input also feeds a library
            # operator).
            gap = F.gluon_resnest_sa_gap(x, radix=self.radix)
        else:
            gap = F.Pooling(x, kernel=(1, 1), pool_type='avg', global_pool=True)
            if self.radix > 1:
                gap = self._sum_splits(F, gap)
        atten = self.relu1(self.bn1(self.fc1(gap)))
        atten = self.fc2(atten)
        if self.radix == 1:
            return F.broadcast_mul(x, F.sigmoid(atten))
        # (N, K*R*w, 1, 1) cardinal-major -> softmax over R -> (N, R*C, 1, 1) radix-major.
        if self.cardinality > 1:
            atten = F.reshape(atten, (0, self.cardinality, self.radix, -1))
            atten = F.softmax(atten, axis=2)
            atten = F.reshape(F.swapaxes(atten, 1, 2), (0, -1, 1, 1))
        else:
            atten = F.reshape(F.softmax(F.reshape(atten, (0, self.radix, -1)), axis=1),
                              (0, -1, 1, 1))
        if self.native:
            return F.gluon_resnest_sa_sum(atten, x, radix=self.radix, pool=int(self.pool))
        # Weighted sum of the splits: one broadcast multiply over the (N, R, C, H, W) view, then
        # the sum over R as a batched (1 x R) @ (R x CHW) product, a single memory-bound pass
        # (MXNet's reduction over a middle axis is several times slower on CPU).
        weighted = F.broadcast_mul(F.reshape(x, (0, -4, self.radix, -1, -2)),
                                   F.reshape(atten, (0, -4, self.radix, -1, -2)))
        ones = F.reshape(F.ones_like(F.slice_axis(atten, axis=1, begin=0, end=self.radix)),
                         (0, 1, self.radix))
        out = F.batch_dot(ones, F.reshape(weighted, (0, 0, -1)))
        return F.reshape_like(out, weighted, lhs_begin=1, lhs_end=3, rhs_begin=2, rhs_end=5)

    def _sum_splits(self, F, x):  # noqa: N803 - MXNet's convention
        """Sum of the ``radix`` channel slices of a radix-major (N, R*C, 1, 1) tensor."""
        parts = [F.slice_axis(x, axis=1, begin=r * self.channels, end=(r + 1) * self.channels)
                 for r in range(self.radix)]
        out = parts[0]
        for part in parts[1:]:
            out = out + part
        return out
