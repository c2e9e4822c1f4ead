"""Declarative training recipes: a validated dataclass loaded from YAML.

The recipes of the paper's settings ship inside the package (``gluon_resnest/recipes/*.yaml``).

A recipe states what the paper states (global batch, epochs, regularisation, crops); what
follows from it (learning rate ``base_lr * global_batch / 256``, per-worker batch, steps per
epoch) is computed by :func:`resolve`, never typed into a file.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..constants import IMAGENET_MEAN, IMAGENET_STD
from ..models.info import model_info
from ..registry import list_models

RECIPE_DIR = Path(str(resources.files('gluon_resnest') / 'recipes'))
OPTIMIZERS = ('nag', 'sgd')
AMP_DTYPES = ('float16', 'bfloat16')


@dataclass
class Recipe:
    """One training setting. Field defaults are the paper's ResNeSt-50 ImageNet setting (§5.1)."""

    model: str = 'resnest50'
    model_kwargs: dict = field(default_factory=dict)
    classes: int = 1000
    # data
    train_rec: str = 'train.rec'
    val_rec: str = 'val.rec'
    # None: the model's crops (gluon_resnest.models.model_info)
    train_crop: int | None = None
    eval_crop: int | None = None
    crop_scale: tuple = (0.08, 1.0)
    crop_ratio: tuple = (3 / 4, 4 / 3)
    hflip: bool = True
    color_jitter: float = 0.4
    pca_noise: float = 0.1
    auto_augment: bool = True
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    num_workers: int = 4
    # optimisation
    global_batch_size: int = 8192
    base_lr: float = 0.1
    lr: float | None = None
    warmup_epochs: float = 5
    epochs: int = 270
    optimizer: str = 'nag'
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # regularisation
    label_smoothing: float = 0.1
    mixup_alpha: float = 0.2
    dropblock_prob: float = 0.1
    final_drop: float = 0.0
    last_gamma: bool = True
    # run
    seed: int = 0
    val_interval: int = 1
    amp: bool = False
    # float16 on GPUs; bfloat16 also runs on CPUs (oneDNN), so the AMP path can be tested there.
    amp_dtype: str = 'float16'
    sync_bn: bool = False


# Fields that may be None, with a value of the type they hold otherwise.
_OPTIONAL = {'lr': 0.0, 'train_crop': 0, 'eval_crop': 0}
# Values resolve() adds to a recipe's fields.
DERIVED = ('per_worker_batch_size', 'world_size')


def recipe_names() -> list[str]:
    """Names of the recipes shipped with the package."""
    return sorted(p.stem for p in RECIPE_DIR.glob('*.yaml'))


def load_recipe(name_or_path: str) -> Recipe:
    """Load and validate a recipe by name (a shipped recipe) or by path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in ('.yaml', '.yml'):
        path = RECIPE_DIR / f'{name_or_path}.yaml'
    if not path.is_file():
        close = difflib.get_close_matches(str(name_or_path), recipe_names(), n=3, cutoff=0.5)
        hint = f' Did you mean: {", ".join(close)}?' if close else ''
        raise ValueError(f'unknown recipe {name_or_path!r}.{hint} '
                         f'Known recipes: {", ".join(recipe_names())}.')
    try:
        values = yaml.safe_load(path.read_text(encoding='utf-8')) or {}
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        reason = str(err).splitlines()[0]
        raise ValueError(f'{path}: not a YAML recipe ({reason})') from None
    if not isinstance(values, dict):
        raise ValueError(f'{path}: a recipe is a mapping of field: value')
    return make_recipe(values, source=str(path))


def make_recipe(values: dict[str, Any], source: str = 'recipe') -> Recipe:
    """Build a :class:`Recipe` from a mapping, converting and checking every value."""
    fields = {f.name: f for f in dataclasses.fields(Recipe)}
    unknown = [k for k in values if k not in fields]
    if unknown:
        close = difflib.get_close_matches(unknown[0], fields, n=3)
        hint = f' (did you mean {", ".join(close)}?)' if close else ''
        raise ValueError(f'{source}: unknown key {unknown[0]!r}{hint}')
    defaults = Recipe()
    converted = {k: coerce(k, v, getattr(defaults, k), source) for k, v in values.items()}
    recipe = Recipe(**converted)
    validate(recipe, source)
    return recipe


def coerce(key: str, value: Any, default: Any, source: str = 'recipe') -> Any:
    """Convert ``value`` (from YAML or a command line string) to the type of ``default``."""
    try:
        if isinstance(value, str) and not isinstance(default, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError as err:
                raise TypeError(f'not YAML: {str(err).splitlines()[0]}') from None
        if key in _OPTIONAL:
            if value is None:
                return None
            default = _OPTIONAL[key]
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError('expected true or false')
            return value
        if isinstance(default, int):
            if isinstance(value, bool) or not math.isfinite(float(value)) \
                    or float(value) != int(value):
                raise TypeError('expected an integer')
            return int(value)
        if isinstance(default, float):
            if isinstance(value, bool) or not math.isfinite(float(value)):
                raise TypeError('expected a finite number')
            return float(value)
        if isinstance(default, tuple):
            if isinstance(value, (str, bytes)) or not all(
                    math.isfinite(float(v)) for v in value):
                raise TypeError('expected a list of finite numbers')
            return tuple(float(v) for v in value)
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise TypeError('expected a mapping')
            return dict(value)
        return str(value)
    except (TypeError, ValueError, OverflowError) as err:
        raise ValueError(f'{source}: bad value {value!r} for {key!r}: {err}') from None


def validate(recipe: Recipe, source: str = 'recipe') -> None:
    """Raise ValueError for values outside their meaning."""
    def check(ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(f'{source}: {message}')

    check(recipe.model in list_models(), f'unknown model {recipe.model!r}; '
                                         f'known: {", ".join(list_models())}')
    check(2 <= recipe.classes <= 10**6, 'classes must be in [2, 1000000]')
    check(1 <= recipe.global_batch_size <= 2**20, 'global_batch_size must be in [1, 1048576]')
    check(1 <= recipe.epochs <= 100000, 'epochs must be in [1, 100000]')
    check(0 <= recipe.warmup_epochs <= recipe.epochs, 'warmup_epochs must be in [0, epochs]')
    check(recipe.base_lr > 0 and (recipe.lr is None or recipe.lr > 0), 'lr must be positive')
    check(recipe.optimizer in OPTIMIZERS, f'optimizer must be one of {OPTIMIZERS}')
    check(0 <= recipe.momentum < 1, 'momentum must be in [0, 1)')
    check(recipe.weight_decay >= 0, 'weight_decay must be >= 0')
    check(0 <= recipe.label_smoothing < 1, 'label_smoothing must be in [0, 1)')
    check(recipe.mixup_alpha >= 0, 'mixup_alpha must be >= 0')
    check(0 <= recipe.dropblock_prob < 1, 'dropblock_prob must be in [0, 1)')
    check(0 <= recipe.final_drop < 1, 'final_drop must be in [0, 1)')
    check(all(c is None or 16 <= c <= 2048 for c in (recipe.train_crop, recipe.eval_crop)),
          'train_crop and eval_crop must be in [16, 2048] pixels')
    check(len(recipe.crop_scale) == 2 and 0 < recipe.crop_scale[0] <= recipe.crop_scale[1] <= 1,
          'crop_scale must be (low, high) with 0 < low <= high <= 1')
    check(len(recipe.crop_ratio) == 2 and 0 < recipe.crop_ratio[0] <= recipe.crop_ratio[1],
          'crop_ratio must be (low, high) with 0 < low <= high')
    check(len(recipe.mean) == 3 and len(recipe.std) == 3 and min(recipe.std) > 0,
          'mean and std need three values, std positive')
    check(0 <= recipe.num_workers <= 1024, 'num_workers must be in [0, 1024]')
    check(1 <= recipe.val_interval <= 100000, 'val_interval must be in [1, 100000]')
    check(recipe.amp_dtype in AMP_DTYPES, f'amp_dtype must be one of {AMP_DTYPES}')


def resolve(recipe: Recipe, world_size: int = 1) -> dict[str, Any]:
    """The full configuration of a run on ``world_size`` workers, derived values included.

    Raises:
        ValueError: The global batch does not divide evenly over the workers.
    """
    if world_size < 1:
        raise ValueError(f'world_size must be positive, got {world_size}')
    if recipe.global_batch_size % world_size:
        raise ValueError(f'global_batch_size {recipe.global_batch_size} does not divide over '
                         f'{world_size} workers; choose a multiple of {world_size}')
    config = dataclasses.asdict(recipe)
    config['per_worker_batch_size'] = recipe.global_batch_size // world_size
    config['world_size'] = world_size
    if recipe.lr is None:
        config['lr'] = recipe.base_lr * recipe.global_batch_size / 256
    info = model_info(recipe.model)
    for key in ('train_crop', 'eval_crop'):
        if config[key] is None:
            config[key] = info[key]
    return config


def to_json(config: dict[str, Any]) -> str:
    """One JSON object, keys in recipe order."""
    return json.dumps(config, indent=None, default=list)
