"""Training-loop pieces: recipes, schedules, checkpoints, metrics."""
from .checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from .recipe import Recipe, load_recipe, make_recipe, recipe_names, resolve
from .schedule import dropblock_prob, iteration_lr, learning_rate, schedule_epoch_size

__all__ = ['Recipe', 'dropblock_prob', 'iteration_lr', 'latest_checkpoint', 'learning_rate',
           'list_checkpoints', 'load_checkpoint', 'load_recipe', 'make_recipe', 'recipe_names',
           'resolve', 'save_checkpoint', 'schedule_epoch_size']
