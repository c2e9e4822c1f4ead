"""Registry of model builders: ``register_model``, ``list_models``, ``lookup``."""
from __future__ import annotations

import difflib
import fnmatch
from typing import Callable, TypeVar

Builder = TypeVar('Builder', bound=Callable)

_MODELS: dict[str, Callable] = {}


def register_model(fn: Builder) -> Builder:
    """Register ``fn`` under its ``__name__``; a name can be registered once."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f'model {name!r} is already registered')
    _MODELS[name] = fn
    return fn


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally filtered by a shell-style pattern."""
    names = sorted(_MODELS)
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern.lower())]
    return names


def lookup(name: str) -> Callable:
    """The builder registered as ``name`` (case-insensitive); a clear error when there is none."""
    key = str(name).lower()
    if key not in _MODELS:
        close = difflib.get_close_matches(key, _MODELS, n=5, cutoff=0.5)
        hint = f' Did you mean: {", ".join(close)}?' if close else ''
        raise ValueError(f'unknown model {name!r}.{hint} '
                         f'Known models: {", ".join(list_models())}.')
    return _MODELS[key]
