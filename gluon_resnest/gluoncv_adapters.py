"""GluonCV's classes answered by ours, for :func:`gluon_resnest.register_gluoncv`.

* :func:`gluoncv_dropblock_layer`: our :class:`~gluon_resnest.layers.DropBlock` as a subclass
  of GluonCV's ``DropBlock``, so that every ``set_drop_prob`` of GluonCV (including one a user
  imported before the override) recognises it.
* :func:`install_resnest_new` and :data:`SERVED_RESNEST`: a ``__new__`` for GluonCV's
  ``ResNeSt`` class that builds ours (:func:`gluoncv_resnest_class`) while served, so that
  GluonCV's own ``resnest50`` ... functions build our network, however they were imported.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

from mxnet.gluon import nn

from .layers.dropblock import DropBlock, set_block_drop_prob
from .models import ResNeSt

__all__ = ['DROPBLOCK_MODES', 'gluoncv_dropblock_layer', 'gluoncv_resnest_class',
           'gluoncv_set_drop_prob', 'install_resnest_new', 'SERVED_RESNEST']

#: ``register_gluoncv(dropblock=...)``: the ``graph`` mode of our DropBlock for each choice.
#: ``'gluoncv'``: GluonCV's effective behaviour, a DropBlock traced into a graph outside
#: training is left out of it (GluonCV's decides in Python); ``'effective'``: always in the
#: graph, so the probability set later is the one used.
DROPBLOCK_MODES = {'gluoncv': 'training', 'effective': 'always'}


def _check_mode(dropblock: str) -> str:
    if dropblock not in DROPBLOCK_MODES:
        raise ValueError(f'dropblock must be one of {sorted(DROPBLOCK_MODES)}, got {dropblock!r}')
    return DROPBLOCK_MODES[dropblock]


@functools.lru_cache(maxsize=None)
def gluoncv_dropblock_layer(dropblock: str = 'gluoncv') -> type:
    """Our DropBlock class for ``dropblock`` mode, also a subclass of GluonCV's ``DropBlock``.

    GluonCV's ``set_drop_prob(p, module)`` sets ``module.drop_prob`` when ``module`` is an
    instance of its ``DropBlock``: with this class it sets ours, whichever copy of the function
    is called. Nothing of GluonCV's DropBlock runs (its constructor and forward are ours).
    """
    graph = _check_mode(dropblock)
    from gluoncv.nn.dropblock import DropBlock as GluonCVDropBlock  # optional dependency

    class GluonCVCompatibleDropBlock(DropBlock, GluonCVDropBlock):
        """:class:`~gluon_resnest.layers.DropBlock` that GluonCV's ``set_drop_prob`` sets."""

        def __init__(self, drop_prob: float = 0.0, block_size: int = 3, **kwargs: Any) -> None:
            kwargs.setdefault('graph', graph)
            DropBlock.__init__(self, drop_prob, block_size, **kwargs)

    GluonCVCompatibleDropBlock.__name__ = GluonCVCompatibleDropBlock.__qualname__ = (
        f'GluonCVCompatibleDropBlock_{dropblock}')
    return GluonCVCompatibleDropBlock


def gluoncv_set_drop_prob(original: Callable[[float, Any], None]) -> Callable[[float, Any], None]:
    """GluonCV's ``set_drop_prob(drop_prob, module)``, extended to our DropBlocks.

    Ours take the value; a ``SymbolBlock`` (the backbone graph of GluonCV's FPN detectors) has
    the DropBlocks traced into it rewritten; every hybridized block drops its cached graph so the
    next call uses the value even without ``hybridize()``. GluonCV's own DropBlocks are left to
    ``original``.
    """

    def set_drop_prob(drop_prob: float, module: Any) -> None:
        if isinstance(module, (DropBlock, nn.SymbolBlock)):
            set_block_drop_prob(module, drop_prob)
            return
        original(drop_prob, module)
        if isinstance(module, nn.HybridBlock):
            module._clear_cached_op()  # pylint: disable=protected-access

    set_drop_prob.__doc__ = original.__doc__
    set_drop_prob.__wrapped__ = original  # type: ignore[attr-defined]
    return set_drop_prob


@functools.lru_cache(maxsize=None)
def gluoncv_resnest_class(dropblock: str = 'gluoncv') -> type:
    """Our :class:`~gluon_resnest.models.ResNeSt` with the constructor of GluonCV's ``ResNeSt``.

    Args:
        dropblock: DropBlock mode (see :data:`DROPBLOCK_MODES`).
    """
    layer = gluoncv_dropblock_layer(dropblock)

    class GluonCVResNeSt(ResNeSt):
        """gluon_resnest's :class:`~gluon_resnest.models.ResNeSt` from GluonCV's arguments."""

        def __init__(self, block: type, layers: list[int], cardinality: int = 1,
                     bottleneck_width: int = 64, classes: int = 1000, dilated: bool = False,
                     dilation: int = 1, norm_layer: Callable[..., nn.HybridBlock] = nn.BatchNorm,
                     norm_kwargs: dict[str, Any] | None = None, last_gamma: bool = False,
                     deep_stem: bool = False, stem_width: int = 32, avg_down: bool = False,
                     final_drop: float = 0.0, use_global_stats: bool = False,
                     name_prefix: str = '', dropblock_prob: float = 0.0,
                     input_size: Any = 224, use_splat: bool = False, radix: int = 2,
                     avd: bool = False, avd_first: bool = False,
                     split_drop_ratio: float = 0.0) -> None:
            del block, input_size  # GluonCV's Bottleneck; our DropBlock adapts to any size
            if split_drop_ratio:
                raise ValueError('split_drop_ratio (dropout inside Split-Attention) is not '
                                 'supported by gluon_resnest')
            if dilated or dilation == 4:
                output_stride = 8
            elif dilation in (1, 2):
                output_stride = 32 // dilation
            else:
                raise ValueError(f'dilation must be 1, 2 or 4 (GluonCV semantics), got {dilation}')
            super().__init__(
                layers, classes=classes, radix=radix if use_splat else 0,
                cardinality=cardinality, bottleneck_width=bottleneck_width,
                deep_stem=deep_stem, stem_width=stem_width, avg_down=avg_down, avd=avd,
                avd_first=avd_first, final_drop=final_drop, last_gamma=last_gamma,
                dropblock_prob=dropblock_prob, output_stride=output_stride,
                norm_layer=norm_layer, norm_kwargs=norm_kwargs,
                use_global_stats=use_global_stats, dropblock_layer=layer, prefix=name_prefix)

    return GluonCVResNeSt


#: GluonCV's ResNeSt class -> (GluonCV's Bottleneck class, our class built in its place), while
#: the override is active (see :func:`install_resnest_new`).
SERVED_RESNEST: dict[type, tuple[type, type]] = {}


def install_resnest_new(original: type) -> None:
    """Give GluonCV's ``ResNeSt`` class a ``__new__`` that builds ours while it is served.

    Every construction of GluonCV's class, through any name bound to it, goes through
    ``__new__``: GluonCV's ``resnest50`` ... functions look the class up when called, and so
    build ours however they were imported. While ``SERVED_RESNEST`` holds the class, a call
    with GluonCV's ``Bottleneck`` returns our network, and Python skips GluonCV's ``__init__``
    because the object is not an instance of its class; otherwise (not served, a subclass, a
    user's own block that ours cannot stand for) it is GluonCV's ordinary construction. The
    method stays once installed: CPython cannot give a class back its inherited ``__new__``
    (after ``del``, the slot calls ``object.__new__`` with the arguments, which fails).
    """
    if getattr(vars(original).get('__new__'), '__func__', None) is _resnest_new:
        return
    if '__new__' in vars(original):
        raise RuntimeError(f'{original.__qualname__} defines its own __new__; gluon_resnest '
                           f'cannot serve it')
    original.__new__ = staticmethod(_resnest_new)


def _resnest_new(cls: type, *args: Any, **kwargs: Any) -> Any:
    served = SERVED_RESNEST.get(cls)
    block = args[0] if args else kwargs.get('block')
    if served is not None and block is served[0]:
        return served[1](*args, **kwargs)
    return object.__new__(cls)
