"""ResNet-D tweaks (He et al., "Bag of Tricks", 2019): deep stem and average-pool shortcut."""
from __future__ import annotations

from typing import Any, Callable

from mxnet.gluon import nn

from .norm_relu import ReLU


class DeepStem(nn.HybridSequential):
    """Three 3x3 convolutions (``width``, ``width``, ``2 * width``) replacing the 7x7 stem.

    The first convolution has stride 2. The normalisation and ReLU after the third convolution
    belong to the network (``bn1``, as in GluonCV), so this block ends with a convolution. Child
    indices ``0``..``6`` are part of the checkpoint format. The children are named in the
    enclosing scope (``resnest_conv0`` ... ``resnest_conv2``), as GluonCV names them.
    """

    def __init__(self, width: int, norm_layer: Callable[..., nn.HybridBlock],
                 norm_kwargs: dict[str, Any] | None = None, in_channels: int = 3,
                 weight_initializer: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        norm_kwargs = dict(norm_kwargs or {})
        plan = [(in_channels, width, 2), (width, width, 1), (width, 2 * width, 1)]
        for i, (cin, cout, stride) in enumerate(plan):
            self.add(nn.Conv2D(cout, 3, stride, 1, use_bias=False, in_channels=cin,
                               weight_initializer=weight_initializer))
            if i < len(plan) - 1:
                self.add(norm_layer(in_channels=cout, **norm_kwargs))
                self.add(ReLU())

    def norm_relu_pairs(self) -> list[tuple[nn.Block, nn.Block]]:
        """The (normalisation, ReLU) pairs after the first two convolutions (see
        :func:`~gluon_resnest.layers.fuse_norm_relu`)."""
        return [(self[1], self[2]), (self[4], self[5])]


class Shortcut(nn.HybridSequential):
    """Projection shortcut of a transitional block.

    With ``avg_down`` it is ResNet-D's average pool (kernel = stride, ``ceil_mode``, padding not
    counted) followed by a stride-1 1x1 convolution and normalisation; the pool is kept (as an
    identity 1x1 pool) in dilated stages so that the child indices ``0``, ``1``, ``2`` stay those
    of GluonCV's checkpoints. Without ``avg_down`` it is the classic strided 1x1 convolution.
    """

    def __init__(self, in_channels: int, channels: int, strides: int, avg_down: bool,
                 norm_layer: Callable[..., nn.HybridBlock],
                 norm_kwargs: dict[str, Any] | None = None, weight_initializer: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        norm_kwargs = dict(norm_kwargs or {})
        with self.name_scope():
            if avg_down:
                self.add(nn.AvgPool2D(pool_size=strides, strides=strides, ceil_mode=True,
                                      count_include_pad=False))
                conv_stride = 1
            else:
                conv_stride = strides
            self.add(nn.Conv2D(channels, 1, conv_stride, use_bias=False, in_channels=in_channels,
                               weight_initializer=weight_initializer))
            self.add(norm_layer(in_channels=channels, **norm_kwargs))
