"""GluonCV-style model zoo: ``get_model`` with GluonCV's signature and ``register_gluoncv``.

``pretrained=True`` loads the model's published ImageNet weights, downloaded once into GluonCV's
cache (``~/.mxnet/models``) and verified (:mod:`gluon_resnest.weights`); ``pretrained`` may
also be a sha1 prefix of a published file, as in GluonCV, or the path of a ``.params`` file.

The names are defined once each: :func:`get_model` in :mod:`gluon_resnest.models.zoo`,
:func:`register_gluoncv` in :mod:`gluon_resnest.gluoncv_bridge` (which imports GluonCV only when
called, so this module works without GluonCV), :func:`list_models` in
:mod:`gluon_resnest.registry`. Neither of those modules imports this one.
"""
from __future__ import annotations

from .gluoncv_bridge import register_gluoncv
from .models.zoo import get_model
from .registry import list_models

__all__ = ['get_model', 'list_models', 'register_gluoncv']
