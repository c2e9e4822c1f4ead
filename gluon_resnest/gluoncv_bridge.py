"""Our ResNeSt inside GluonCV's own models: zoo entries, detection, segmentation, DropBlock.

:func:`register_gluoncv` adds this package's models to ``gluoncv.model_zoo.get_model``. With
``override=True`` it also replaces every binding of GluonCV's ``resnest14`` ... ``resnest269``
builders that GluonCV's code calls: the functions of ``gluoncv.model_zoo.resnest`` (which its
Faster R-CNN FPN builders and ``custom_rcnn_fpn`` import when called), the names that other
GluonCV modules bound at import (``gluoncv.model_zoo.segbase`` for DeepLabV3, PSPNet, FCN, ...)
and the model-zoo entries. It gives GluonCV's ``ResNeSt`` class a ``__new__`` that builds ours,
so GluonCV's own builder functions, even copies imported before the override, build ours too. It
makes ``gluoncv.nn.dropblock.set_drop_prob`` (used by ``DropBlockScheduler`` and the detection
builders) set our DropBlocks, including those traced into the graphs of the FPN detectors; our
DropBlocks are instances of GluonCV's ``DropBlock`` class, so a ``set_drop_prob`` imported
earlier sets them too.

DropBlock follows GluonCV's effective behaviour by default (``dropblock='gluoncv'``: left out of
graphs traced outside training, such as the FPN detectors' backbone) or always acts while
training (``dropblock='effective'``); see ``docs/gluoncv.md``.

Served under GluonCV's names, our builders take GluonCV's defaults (DropBlock 0.1 on the last
two stages from ``resnest26`` on), and they build the same parameter and operator names, so
GluonCV's checkpoints of detectors and segmenters load unchanged. :func:`unregister_gluoncv`
(or leaving :func:`gluoncv_override`) puts GluonCV's own functions back.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from typing import Any, Callable, Iterator

import mxnet as mx
from mxnet.gluon import nn

from .gluoncv_adapters import (
    DROPBLOCK_MODES,
    SERVED_RESNEST,
    gluoncv_dropblock_layer,
    gluoncv_resnest_class,
    gluoncv_set_drop_prob,
    install_resnest_new,
)
from .models.zoo import get_model
from .registry import list_models

__all__ = ['GLUONCV_DEFAULTS', 'gluoncv_builder', 'gluoncv_override', 'register_gluoncv',
           'unregister_gluoncv']

logger = logging.getLogger(__name__)

#: What GluonCV's builders of the same name set beyond the architecture, which our table
#: already shares (stem width, final dropout, radix, ...): DropBlock on stages 3 and 4.
GLUONCV_DEFAULTS: dict[str, dict[str, Any]] = {
    'resnest14': {'dropblock_prob': 0.0},
    'resnest26': {'dropblock_prob': 0.1},
    'resnest50': {'dropblock_prob': 0.1},
    'resnest101': {'dropblock_prob': 0.1},
    'resnest200': {'dropblock_prob': 0.1},
    'resnest269': {'dropblock_prob': 0.1},
}

_MISSING = object()
# (dict or module, key, value before the patch), in the order applied.
_patches: list[tuple[Any, str, Any]] = []
# id(replacement) -> (replacement, GluonCV's original): finds modules imported meanwhile.
_replacements: dict[int, tuple[Any, Any]] = {}


def gluoncv_builder(name: str, dropblock: str = 'gluoncv') -> Callable[..., nn.HybridBlock]:
    """Our builder of ``name`` with the signature and defaults of GluonCV's function.

    Args:
        name: One of :data:`GLUONCV_DEFAULTS`.
        dropblock: DropBlock mode, ``'gluoncv'`` or ``'effective'`` (see
            :func:`register_gluoncv`).

    Returns:
        ``fn(pretrained=False, root='~/.mxnet/models', ctx=cpu(), **kwargs)`` building our
        :class:`~gluon_resnest.models.ResNeSt`; ``pretrained`` (True, a sha1 prefix, or a
        ``.params`` path) and ``root`` work as in :func:`gluon_resnest.get_model`, which
        downloads GluonCV's published file into GluonCV's cache; ``kwargs`` are GluonCV's
        (``dilated``, ``dilation``, ``norm_layer``, ``norm_kwargs``, ``use_global_stats``,
        ``input_size``, ...) or ours (``dropblock_prob``, ``output_stride``, ...).
    """
    defaults = dict(GLUONCV_DEFAULTS[name], dropblock_layer=gluoncv_dropblock_layer(dropblock))

    def build(pretrained: bool | str = False, root: str = os.path.join('~', '.mxnet', 'models'),
              ctx: Any = None, **kwargs: Any) -> nn.HybridBlock:
        if kwargs.pop('split_drop_ratio', 0):
            raise ValueError(f'{name}: split_drop_ratio (dropout inside Split-Attention) is not '
                             f'supported by gluon_resnest')
        for key, value in defaults.items():
            kwargs.setdefault(key, value)
        return get_model(name, pretrained=pretrained, ctx=ctx or mx.cpu(), root=root, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__module__ = __name__
    build.__doc__ = (f'gluon_resnest\'s {name} served under GluonCV\'s name, with GluonCV\'s '
                     f'defaults {defaults}.')
    return build


def _set(target: Any, key: str, value: Any) -> None:
    """Patch ``target[key]`` (a dict) or ``target.key`` (a module) and remember the old value."""
    if isinstance(target, dict):
        _patches.append((target, key, target.get(key, _MISSING)))
        target[key] = value
    else:
        _patches.append((target, key, getattr(target, key, _MISSING)))
        setattr(target, key, value)


def _gluoncv_modules() -> list[Any]:
    return [module for mod_name, module in list(sys.modules.items())
            if module is not None and (mod_name == 'gluoncv' or mod_name.startswith('gluoncv.'))]


def _override_gluoncv(builders: dict[str, Callable], dropblock: str) -> None:
    """Rebind, in every loaded GluonCV module, GluonCV's ResNeSt builders, its ResNeSt class
    and set_drop_prob."""
    from gluoncv.model_zoo import resnest as gcv_resnest  # optional dependency
    from gluoncv.nn import dropblock as gcv_dropblock

    swaps = {id(getattr(gcv_resnest, name)): builder for name, builder in builders.items()}
    original_set = gcv_dropblock.set_drop_prob
    swaps[id(original_set)] = gluoncv_set_drop_prob(original_set)
    originals = {id(getattr(gcv_resnest, name)): getattr(gcv_resnest, name) for name in builders}
    originals[id(original_set)] = original_set
    for module in _gluoncv_modules():
        for attr, value in list(vars(module).items()):
            replacement = swaps.get(id(value))
            if replacement is not None and value is originals[id(value)]:
                _set(module, attr, replacement)
    for key, replacement in swaps.items():
        _replacements[id(replacement)] = (replacement, originals[key])
    # GluonCV's class itself, which every binding shares; not its name, through which GluonCV's
    # constructors call ``super(ResNeSt, self)``.
    install_resnest_new(gcv_resnest.ResNeSt)
    _set(SERVED_RESNEST, gcv_resnest.ResNeSt,
         (gcv_resnest.Bottleneck, gluoncv_resnest_class(dropblock)))


def register_gluoncv(override: bool = False, dropblock: str = 'gluoncv') -> list[str]:
    """Make our models available through GluonCV.

    Args:
        override: Also build ours wherever GluonCV builds its own ResNeSt (model zoo,
            ``gluoncv.model_zoo.resnest``, segmentation backbones, detection builders) and let
            GluonCV's ``set_drop_prob`` / ``DropBlockScheduler`` act on our DropBlocks. Without
            it only the names GluonCV lacks (``resnest50_fast_*``, ``resnetd50``) are added.
        dropblock: With ``override``, how the DropBlocks of GluonCV's defaults behave.
            ``'gluoncv'`` (GluonCV's effective behaviour): a DropBlock traced into a graph
            outside training is left out of it, as GluonCV's is; this covers the backbone of
            every FPN detector (traced when built) and a network hybridized and first called
            at inference. ``'effective'``: our DropBlocks drop while training wherever they
            are, and ``set_drop_prob`` / ``DropBlockScheduler`` change them in any graph.

    Returns:
        The model-zoo names now served by this package.
    """
    from gluoncv.model_zoo import model_zoo as gcv_zoo  # optional dependency

    if dropblock not in DROPBLOCK_MODES:
        raise ValueError(f'dropblock must be one of {sorted(DROPBLOCK_MODES)}, got {dropblock!r}')
    unregister_gluoncv()
    zoo = gcv_zoo._models  # pylint: disable=protected-access
    builders = ({name: gluoncv_builder(name, dropblock) for name in GLUONCV_DEFAULTS}
                if override else {})
    registered = []
    for name in list_models():
        if name in zoo and not override:
            continue
        builder = builders.get(name) or functools.partial(get_model, name)
        _set(zoo, name, builder)
        registered.append(name)
    if override:
        _override_gluoncv(builders, dropblock)
        logger.info('GluonCV now builds gluon_resnest for %s', ', '.join(builders))
    return registered


def unregister_gluoncv() -> None:
    """Undo :func:`register_gluoncv`: GluonCV's own functions and zoo entries are back."""
    while _patches:
        target, key, old = _patches.pop()
        if isinstance(target, dict):
            if old is _MISSING:
                target.pop(key, None)
            else:
                target[key] = old
        elif old is _MISSING:
            delattr(target, key)
        else:
            setattr(target, key, old)
    if _replacements:
        # GluonCV modules first imported while the override was active bound our functions.
        for module in _gluoncv_modules():
            for attr, value in list(vars(module).items()):
                replacement, original = _replacements.get(id(value), (None, None))
                if replacement is not None and value is replacement:
                    setattr(module, attr, original)
        _replacements.clear()


@contextlib.contextmanager
def gluoncv_override(override: bool = True, dropblock: str = 'gluoncv') -> Iterator[list[str]]:
    """``with gluoncv_override(): ...`` registers (by default overriding) and always undoes it.

    Yields:
        The model-zoo names served by this package inside the block.
    """
    try:
        yield register_gluoncv(override=override, dropblock=dropblock)
    finally:
        unregister_gluoncv()
