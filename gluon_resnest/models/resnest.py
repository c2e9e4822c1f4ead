"""ResNeSt (Zhang et al., "ResNeSt: Split-Attention Networks") and its ResNet-D baseline.

One network class, :class:`ResNeSt`, and one registered builder per row of the model table,
:data:`gluon_resnest.models.MODEL_SPECS` (architecture and figures; :data:`MODEL_CONFIGS` is
its view of the architectures). Child names follow GluonCV's
``gluoncv.model_zoo.resnest`` so that ``.params`` files saved by either load in the other.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any, Callable, Sequence

import mxnet as mx
from mxnet.gluon import nn

from ..errors import mxnet_reason
from ..layers import DeepStem, DropBlock, Shortcut, SplitAttention
from ..layers.norm_relu import ReLU, fuse_norm_relu
from ..registry import register_model
from .info import MODEL_CONFIGS, MODEL_SPECS, ResNeStConfig  # noqa: F401 - their old home

# The initialiser of training from scratch: the authors' script (``scripts/gluon/train.py``)
# sets it globally, ``net.initialize(KAIMING_FAN_IN)``, on a network whose layers have no
# initialisers of their own: Kaiming normal with fan-in, ``std = sqrt(2 / fan_in)``, for every
# convolution and the classifier; biases and BatchNorm beta 0, gamma 1 (0 on each block's last
# BatchNorm with ``last_gamma``). Like GluonCV's networks, ours give no layer a weight
# initialiser, so the global initialiser passed to ``initialize`` decides.
KAIMING_FAN_IN = mx.init.Xavier(rnd_type='gaussian', factor_type='in', magnitude=2)

# (stride, dilation of the stage, dilation of its first block) for stages 1..4.
_STAGE_PLANS = {
    32: ((1, 1, 1), (2, 1, 1), (2, 1, 1), (2, 1, 1)),
    16: ((1, 1, 1), (2, 1, 1), (2, 1, 1), (1, 2, 1)),
    8: ((1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 4, 2)),
}


class Bottleneck(nn.HybridBlock):
    """Residual bottleneck with a Split-Attention (``radix >= 1``) or plain (``radix == 0``) 3x3.

    Args:
        in_channels: Input channels.
        channels: Base width of the stage; the block outputs ``4 * channels``.
        strides: Stride of the block.
        dilation: Dilation (and padding) of the 3x3 convolution.
        downsample: Projection shortcut, or None for identity.
        radix: Splits per cardinal group; 0 gives a ResNet-D bottleneck.
        cardinality: Cardinal groups.
        bottleneck_width: Width per group at the first stage (64 for "1x64d").
        avd: Apply a 3x3 average pool (stride ``strides``) instead of striding the 3x3 conv.
        avd_first: Put that pool before the 3x3 conv (the "fast" variants) instead of after.
        last_gamma: Initialise the gamma of the last BatchNorm to zero.
        dropblock_prob: DropBlock probability inside the block (0 disables it).
        norm_layer: Normalisation layer class.
        norm_kwargs: Extra arguments of ``norm_layer``.
        native: Split-Attention with gluon_resnest's native operator (see
            :class:`~gluon_resnest.layers.SplitAttention`), which then also applies the avd
            pooling that follows it.
        dropblock_layer: DropBlock class, called as ``dropblock_layer(prob, 3)``.
    """

    expansion = 4

    def __init__(self, in_channels: int, channels: int, strides: int = 1, dilation: int = 1,
                 downsample: nn.HybridBlock | None = None, radix: int = 2, cardinality: int = 1,
                 bottleneck_width: int = 64, avd: bool = False, avd_first: bool = False,
                 last_gamma: bool = False, dropblock_prob: float = 0.0,
                 norm_layer: Callable[..., nn.HybridBlock] = nn.BatchNorm,
                 norm_kwargs: dict[str, Any] | None = None, native: bool = False,
                 dropblock_layer: Callable[..., nn.HybridBlock] = DropBlock,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        norm_kwargs = dict(norm_kwargs or {})
        width = int(channels * (bottleneck_width / 64.0)) * cardinality
        out_channels = channels * self.expansion
        self.radix = radix
        self.avd = avd
        self.avd_first = avd_first
        self.use_dropblock = dropblock_prob > 0
        conv_strides = 1 if avd else strides
        # No name scope of its own: the children are named in the stage's scope, in GluonCV's
        # order, so that parameter and operator names are GluonCV's (``resnest_layers1_conv0``,
        # ``resnest_layers1_relu11_fwd``). GluonCV's FPN detectors pick their inputs by those
        # operator names and their checkpoints key the backbone parameters by those names.
        self.conv1 = nn.Conv2D(width, 1, use_bias=False, in_channels=in_channels)
        self.bn1 = norm_layer(in_channels=width, **norm_kwargs)
        self.relu1 = ReLU()
        if radix >= 1:
            self.conv2 = SplitAttention(width, 3, conv_strides, dilation, dilation,
                                        radix=radix, cardinality=cardinality,
                                        in_channels=width, norm_layer=norm_layer,
                                        norm_kwargs=norm_kwargs,
                                        native=native)
        else:
            self.conv2 = nn.Conv2D(width, 3, conv_strides, dilation, dilation,
                                   groups=cardinality, use_bias=False, in_channels=width)
            self.bn2 = norm_layer(in_channels=width, **norm_kwargs)
            self.relu2 = ReLU()
        self.conv3 = nn.Conv2D(out_channels, 1, use_bias=False, in_channels=width)
        gamma_init = 'zeros' if last_gamma else 'ones'
        self.bn3 = norm_layer(in_channels=out_channels, gamma_initializer=gamma_init,
                              **norm_kwargs)
        if avd:
            self.avd_layer = nn.AvgPool2D(3, strides, padding=1)
        # The native Split-Attention operator pools its own output (3x3, stride 2, padding 1).
        self._avd_strides = strides if avd else 1
        self.pool_in_conv2 = False
        self.set_native(native)
        self.relu3 = nn.Activation('relu')
        self.downsample = downsample
        if self.use_dropblock:
            self.dropblock1 = dropblock_layer(dropblock_prob, 3)
            self.dropblock2 = dropblock_layer(dropblock_prob, 3)
            self.dropblock3 = dropblock_layer(dropblock_prob, 3)
        if native:
            fuse_norm_relu(self)

    def norm_relu_pairs(self) -> list[tuple[nn.Block, nn.Block]]:
        """The (normalisation, ReLU) pairs with nothing between them (see
        :func:`~gluon_resnest.layers.fuse_norm_relu`)."""
        if self.use_dropblock:
            return []
        return [(self.bn1, self.relu1)] + ([(self.bn2, self.relu2)] if self.radix == 0 else [])

    def set_native(self, native: bool) -> None:
        """Compute the Split-Attention with gluon_resnest's native operators (or not); the
        parameters are the same either way."""
        if not isinstance(self.conv2, SplitAttention):
            return
        self.conv2.native = native and self.radix > 1
        self.pool_in_conv2 = (self.conv2.native and self.avd and not self.avd_first
                              and self._avd_strides == 2 and not self.use_dropblock)
        self.conv2.pool = self.pool_in_conv2

    def hybrid_forward(self, F, x):  # noqa: N803 - MXNet's convention
        out = self.bn1(self.conv1(x))
        if self.use_dropblock:
            out = self.dropblock1(out)
        out = self.relu1(out)
        if self.avd and self.avd_first:
            out = self.avd_layer(out)
        out = self.conv2(out)
        if self.radix == 0:
            out = self.bn2(out)
        if self.use_dropblock:
            out = self.dropblock2(out)
        if self.radix == 0:
            out = self.relu2(out)
        if self.avd and not self.avd_first and not self.pool_in_conv2:
            out = self.avd_layer(out)
        out = self.bn3(self.conv3(out))
        if self.use_dropblock:
            out = self.dropblock3(out)
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu3(out + residual)


class ResNeSt(nn.HybridBlock):
    """ResNeSt backbone and classifier.

    Args:
        layers: Bottlenecks per stage.
        classes: Classifier outputs.
        radix: Splits per cardinal group (0: ResNet-D bottlenecks).
        cardinality: Cardinal groups.
        bottleneck_width: Group width at the first stage.
        deep_stem: Three 3x3 stem convolutions instead of one 7x7.
        stem_width: Width of the deep stem's first two convolutions.
        avg_down: Average-pool shortcut on transitional blocks.
        avd: Average downsampling in blocks that change stride or dilation.
        avd_first: Average downsampling before the 3x3 conv ("fast" variants).
        final_drop: Dropout before the classifier.
        last_gamma: Zero-initialise the gamma of each block's last BatchNorm.
        dropblock_prob: DropBlock probability on the last two stages.
        dropblock_layer: DropBlock class of those stages (see :class:`Bottleneck`).
        output_stride: 32 (classification), 16 or 8 (dilated last stages for dense prediction).
        features_only: Build no classifier; ``forward`` returns the stage outputs (C2, C3, C4, C5).
        in_channels: Channels of the input images.
        norm_layer: Normalisation layer, e.g. ``mx.gluon.contrib.nn.SyncBatchNorm``.
        norm_kwargs: Extra arguments of ``norm_layer``.
        use_global_stats: Freeze BatchNorm statistics (GluonCV's keyword).
        native: Compute each Split-Attention weighted sum (and the avd pooling after it) with
            gluon_resnest's native operator (:mod:`gluon_resnest.native`, which must be
            loaded): the training step's fast path, on CPU in float32 (no AMP). The parameters
            are the same; a graph traced with it needs the operator library to load, so export
            from a network built without it.
        name: Registered name, used in error messages.
        **kwargs: ``prefix`` / ``params`` of :class:`mxnet.gluon.HybridBlock`. The prefix is
            ``resnest_`` as in GluonCV, so the hybridized graph carries GluonCV's parameter and
            operator names (GluonCV's detection code selects FPN inputs by them).
    """

    def __init__(self, layers: Sequence[int], classes: int = 1000, radix: int = 2,
                 cardinality: int = 1, bottleneck_width: int = 64, deep_stem: bool = True,
                 stem_width: int = 32, avg_down: bool = True, avd: bool = True,
                 avd_first: bool = False, final_drop: float = 0.0, last_gamma: bool = False,
                 dropblock_prob: float = 0.0, output_stride: int = 32,
                 features_only: bool = False, in_channels: int = 3,
                 norm_layer: Callable[..., nn.HybridBlock] = nn.BatchNorm,
                 norm_kwargs: dict[str, Any] | None = None, use_global_stats: bool = False,
                 native: bool = False, name: str = 'resnest',
                 dropblock_layer: Callable[..., nn.HybridBlock] = DropBlock,
                 **kwargs: Any) -> None:
        kwargs.setdefault('prefix', 'resnest_')
        super().__init__(**kwargs)
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f'layers must be four positive counts, got {layers}')
        if output_stride not in _STAGE_PLANS:
            raise ValueError(f'output_stride must be one of {sorted(_STAGE_PLANS)}, '
                             f'got {output_stride}')
        if isinstance(classes, bool) or not hasattr(classes, '__index__') or (
                classes < 1 and not features_only):
            raise ValueError(f'classes must be a whole number above 0, got {classes!r}')
        if not 0.0 <= final_drop < 1.0:
            raise ValueError(f'final_drop must be in [0, 1), got {final_drop}')
        norm_kwargs = dict(norm_kwargs or {})
        if use_global_stats:
            norm_kwargs['use_global_stats'] = True
        self.model_name = name
        self.in_channels = in_channels
        self.classes = classes
        self.features_only = features_only
        block_kwargs = dict(radix=radix, cardinality=cardinality,
                            bottleneck_width=bottleneck_width, avd_first=avd_first,
                            last_gamma=last_gamma, norm_layer=norm_layer, norm_kwargs=norm_kwargs,
                            native=native, dropblock_layer=dropblock_layer)
        stem_out = 2 * stem_width if deep_stem else 64
        with self.name_scope():
            if deep_stem:
                self.conv1 = DeepStem(stem_width, norm_layer, norm_kwargs, in_channels,
                                      prefix='conv1')
            else:
                self.conv1 = nn.Conv2D(64, 7, 2, 3, use_bias=False, in_channels=in_channels)
            self.bn1 = norm_layer(in_channels=stem_out, **norm_kwargs)
            # Named blocks rather than bare operators: GluonCV's segmentation models copy
            # ``relu`` and the graph names match GluonCV's. Activation and global Pooling (not
            # relu and mean) run on oneDNN without reorders.
            self.relu = ReLU()
            self.maxpool = nn.MaxPool2D(pool_size=3, strides=2, padding=1)
            inplanes = stem_out
            for index, (stride, dilation, first_dilation) in enumerate(
                    _STAGE_PLANS[output_stride], start=1):
                channels = 64 * 2 ** (index - 1)
                out_channels = channels * Bottleneck.expansion
                downsample = None
                if stride != 1 or inplanes != out_channels:
                    downsample = Shortcut(inplanes, out_channels, stride, avg_down, norm_layer,
                                          norm_kwargs, prefix=f'down{index}_')
                stage = nn.HybridSequential(prefix=f'layers{index}_')
                with stage.name_scope():
                    for i in range(layers[index - 1]):
                        first = i == 0
                        stage.add(Bottleneck(
                            inplanes, channels, strides=stride if first else 1,
                            dilation=first_dilation if first else dilation,
                            downsample=downsample if first else None,
                            avd=avd and first and (stride > 1 or dilation > 1),
                            dropblock_prob=dropblock_prob if index >= 3 else 0.0,
                            **block_kwargs))
                        inplanes = out_channels
                setattr(self, f'layer{index}', stage)
            if not features_only:
                self.avgpool = nn.GlobalAvgPool2D()
                self.flat = nn.Flatten()
                self.drop = nn.Dropout(final_drop) if final_drop > 0 else None
                self.fc = nn.Dense(classes, in_units=inplanes)
        if native:
            fuse_norm_relu(self)

    def norm_relu_pairs(self) -> list[tuple[nn.Block, nn.Block]]:
        """The stem's last (normalisation, ReLU) pair (see
        :func:`~gluon_resnest.layers.fuse_norm_relu`)."""
        return [(self.bn1, self.relu)]

    def hybrid_forward(self, F, x):  # noqa: N803 - MXNet's convention
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        if self.features_only:
            return c2, c3, c4, c5
        x = self.flat(self.avgpool(c5))
        if self.drop is not None:
            x = self.drop(x)
        return self.fc(x)

    def forward(self, x, *args):
        if isinstance(x, mx.nd.NDArray) and (x.ndim != 4 or x.shape[1] != self.in_channels):
            raise ValueError(f'{self.model_name} expects a batch of images shaped '
                             f'(N, {self.in_channels}, H, W), got an array of shape {x.shape}')
        return super().forward(x, *args)

    def load_parameters(self, filename: str, ctx: Any = None, allow_missing: bool = False,
                        ignore_extra: bool = False, **kwargs: Any) -> None:
        """Load a ``save_parameters`` file (ours or GluonCV's) after checking that it fits.

        Raises:
            FileNotFoundError: No such file.
            ValueError: The file is not a parameter file, or is one of another architecture;
                the message names the first parameter that does not fit.
        """
        filename = os.fspath(filename)
        if not os.path.isfile(filename):
            raise FileNotFoundError(f'no parameter file at {filename!r}')
        check_parameters(self, load_param_file(filename), filename, allow_missing, ignore_extra)
        super().load_parameters(filename, ctx=ctx, allow_missing=allow_missing,
                                ignore_extra=ignore_extra, **kwargs)


def load_param_file(filename: str) -> dict[str, mx.nd.NDArray]:
    """Read a parameter file into a name -> array dict with a readable error on bad input."""
    try:
        loaded = mx.nd.load(filename)
    except mx.base.MXNetError as err:
        raise ValueError(f'{filename!r} is not an MXNet parameter file: '
                         f'{mxnet_reason(err)}') from None
    if not isinstance(loaded, dict):
        raise ValueError(f'{filename!r} holds unnamed arrays, not named parameters')
    return loaded


def check_parameters(net: nn.Block, loaded: dict[str, mx.nd.NDArray], source: str,
                     allow_missing: bool = False, ignore_extra: bool = False) -> None:
    """Raise a ValueError naming the first parameter of ``net`` that ``loaded`` does not fit."""
    if loaded and all(k.startswith(('arg:', 'aux:')) for k in loaded):
        raise ValueError(f'{source!r} is an exported (symbol/params) file; load it with '
                         f'mx.gluon.SymbolBlock.imports together with its -symbol.json')
    name = getattr(net, 'model_name', type(net).__name__)
    params = net._collect_params_with_prefix()  # pylint: disable=protected-access
    for key, param in params.items():
        if key not in loaded:
            if allow_missing:
                continue
            raise ValueError(f'{source!r} does not fit {name}: it has no parameter {key!r} '
                             f'(model shape {param.shape}); is it a checkpoint of another '
                             f'architecture?')
        saved = tuple(loaded[key].shape)
        if 0 not in param.shape and saved != tuple(param.shape):
            raise ValueError(f'{source!r} does not fit {name}: parameter {key!r} has shape '
                             f'{saved} in the file but {tuple(param.shape)} in the model')
    if not ignore_extra:
        extra = [k for k in loaded if k not in params]
        if extra:
            raise ValueError(f'{source!r} does not fit {name}: the file has parameter '
                             f'{extra[0]!r} ({len(extra)} in all) that the model lacks')


def _create(name: str, **kwargs: Any) -> ResNeSt:
    """Build the network of ``MODEL_SPECS[name].config``; keyword arguments override it."""
    config = asdict(MODEL_SPECS[name].config)
    config.update(kwargs)
    return ResNeSt(name=name, **config)


@register_model
def resnest14(**kwargs: Any) -> ResNeSt:
    """ResNeSt-14: layers 1,1,1,1, 2s1x64d; not a model of the paper.

    GluonCV's model zoo: 75.75% top-1 at 224. Counted: 10,611,688 parameters.
    """
    return _create('resnest14', **kwargs)


@register_model
def resnest26(**kwargs: Any) -> ResNeSt:
    """ResNeSt-26: layers 2,2,2,2, 2s1x64d; not a model of the paper.

    GluonCV's model zoo: 78.68% top-1 at 224. Counted: 17,069,448 parameters.
    """
    return _create('resnest26', **kwargs)


@register_model
def resnest50(**kwargs: Any) -> ResNeSt:
    """ResNeSt-50: layers 3,4,6,3, 2s1x64d.

    Paper, Table 1 (left): 27.5M parameters, 5.39 GFLOPs, 81.13% top-1 at 224.
    Counted: 27,483,240 parameters.
    """
    return _create('resnest50', **kwargs)


@register_model
def resnest101(**kwargs: Any) -> ResNeSt:
    """ResNeSt-101: layers 3,4,23,3, 2s1x64d, stem width 64.

    Paper, Table 2: 48M parameters, 83.0% top-1 at 256. Counted: 48,275,016 parameters.
    """
    return _create('resnest101', **kwargs)


@register_model
def resnest200(**kwargs: Any) -> ResNeSt:
    """ResNeSt-200: layers 3,24,36,3, 2s1x64d, stem width 64, dropout 0.2 before the FC.

    Paper, Table 2: 70M parameters, 83.9% top-1 at 320. Counted: 70,201,544 parameters.
    """
    return _create('resnest200', **kwargs)


@register_model
def resnest269(**kwargs: Any) -> ResNeSt:
    """ResNeSt-269: layers 3,30,48,8, 2s1x64d, stem width 64, dropout 0.2 before the FC.

    Paper, Table 2: 111M parameters, 84.5% top-1 at 416. Counted: 110,929,480 parameters.
    """
    return _create('resnest269', **kwargs)


@register_model
def resnest50_fast_1s1x64d(**kwargs: Any) -> ResNeSt:
    """ResNeSt-50-fast: layers 3,4,6,3, 1s1x64d, average downsampling before the 3x3 conv.

    Paper, Table 1 (right): 26.3M parameters, 4.34 GFLOPs, 80.35% top-1 at 224.
    Counted: 26,217,896 parameters.
    """
    return _create('resnest50_fast_1s1x64d', **kwargs)


@register_model
def resnest50_fast_2s1x64d(**kwargs: Any) -> ResNeSt:
    """ResNeSt-50-fast: layers 3,4,6,3, 2s1x64d, average downsampling before the 3x3 conv.

    Paper, Table 1 (right): 27.5M parameters, 4.34 GFLOPs, 80.64% top-1 at 224.
    Counted: 27,483,240 parameters.
    """
    return _create('resnest50_fast_2s1x64d', **kwargs)


@register_model
def resnest50_fast_4s1x64d(**kwargs: Any) -> ResNeSt:
    """ResNeSt-50-fast: layers 3,4,6,3, 4s1x64d, average downsampling before the 3x3 conv.

    Paper, Table 1 (right): 31.9M parameters, 4.35 GFLOPs, 80.90% top-1 at 224.
    Counted: 31,912,712 parameters.
    """
    return _create('resnest50_fast_4s1x64d', **kwargs)


@register_model
def resnest50_fast_1s2x40d(**kwargs: Any) -> ResNeSt:
    """ResNeSt-50-fast: layers 3,4,6,3, 1s2x40d; not a row of the paper.

    The authors' model zoo: 80.72% top-1 at 224. Counted: 25,946,680 parameters.
    """
    return _create('resnest50_fast_1s2x40d', **kwargs)


@register_model
def resnest50_fast_2s2x40d(**kwargs: Any) -> ResNeSt:
    """ResNeSt-50-fast: layers 3,4,6,3, 2s2x40d, average downsampling before the 3x3 conv.

    Paper, Table 1 (right): 26.9M parameters, 4.38 GFLOPs, 81.00% top-1 at 224.
    Counted: 26,943,792 parameters.
    """
    return _create('resnest50_fast_2s2x40d', **kwargs)


@register_model
def resnest50_fast_4s2x40d(**kwargs: Any) -> ResNeSt:
    """ResNeSt-50-fast: layers 3,4,6,3, 4s2x40d; not a row of the paper.

    The authors' model zoo: 81.17% top-1 at 224. Counted: 30,417,592 parameters.
    """
    return _create('resnest50_fast_4s2x40d', **kwargs)


@register_model
def resnest50_fast_1s4x24d(**kwargs: Any) -> ResNeSt:
    """ResNeSt-50-fast: layers 3,4,6,3, 1s4x24d; not a row of the paper.

    The authors' model zoo: 80.97% top-1 at 224. Counted: 25,677,000 parameters.
    """
    return _create('resnest50_fast_1s4x24d', **kwargs)


@register_model
def resnetd50(**kwargs: Any) -> ResNeSt:
    """ResNet-D-50, the paper's "0s1x64d" baseline: layers 3,4,6,3, 0s1x64d.

    Paper, Table 1 (left): 25.6M parameters, 4.34 GFLOPs, 78.31% top-1 at 224.
    Counted: 25,576,264 parameters.

    Deviation note: built in the ResNeSt-fast setting of Table 1 (right), i.e. with the average
    downsampling placed before the 3x3 convolution; this has no parameters and the same
    multiply-accumulates as striding the 3x3 convolution.
    """
    return _create('resnetd50', **kwargs)
