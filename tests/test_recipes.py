"""Recipes resolve to the paper's values; the LR and DropBlock schedules follow their formulas."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from gluon_resnest.training import dropblock_prob, learning_rate, load_recipe, recipe_names, resolve

ROOT = Path(__file__).resolve().parents[1]
FAST = ['resnest50_fast_1s1x64d', 'resnest50_fast_2s1x64d', 'resnest50_fast_4s1x64d',
        'resnest50_fast_1s2x40d', 'resnest50_fast_2s2x40d', 'resnest50_fast_4s2x40d',
        'resnest50_fast_1s4x24d']
# name: (global batch, train crop, eval crop, final dropout) from paper §5.1 / §5.3
PAPER = {'resnest50': (8192, 224, 224, 0.0), 'resnest101': (4096, 224, 256, 0.0),
         'resnest200': (2048, 256, 320, 0.2), 'resnest269': (2048, 320, 416, 0.2),
         **{name: (8192, 224, 224, 0.0) for name in FAST}}
ABLATIONS = {'resnetd50': (0.0, False), 'resnetd50_mixup': (0.2, False),
             'resnetd50_mixup_autoaug': (0.2, True)}
REQUIRED_KEYS = {'model', 'global_batch_size', 'per_worker_batch_size', 'lr', 'warmup_epochs',
                 'epochs', 'optimizer', 'momentum', 'weight_decay', 'label_smoothing',
                 'mixup_alpha', 'auto_augment', 'dropblock_prob', 'final_drop', 'train_crop',
                 'eval_crop', 'last_gamma'}


def test_every_paper_setting_has_a_recipe():
    assert set(PAPER) | set(ABLATIONS) | {'digits'} == set(recipe_names())


@pytest.mark.parametrize('name', sorted(PAPER))
def test_paper_recipes(name):
    batch, train_crop, eval_crop, final_drop = PAPER[name]
    config = resolve(load_recipe(name), world_size=64)
    assert config['model'] == name
    assert config['global_batch_size'] == batch
    assert config['per_worker_batch_size'] == batch // 64
    assert config['lr'] == pytest.approx(0.1 * batch / 256)
    assert (config['train_crop'], config['eval_crop']) == (train_crop, eval_crop)
    assert config['final_drop'] == final_drop
    assert config['warmup_epochs'] == 5 and config['epochs'] == 270
    assert config['optimizer'] == 'nag' and config['momentum'] == 0.9
    assert config['weight_decay'] == 1e-4 and config['label_smoothing'] == 0.1
    assert config['mixup_alpha'] == 0.2 and config['auto_augment'] is True
    assert config['dropblock_prob'] == 0.1 and config['last_gamma'] is True
    assert (config['color_jitter'], config['pca_noise']) == (0.4, 0.1)
    assert tuple(config['crop_scale']) == (0.08, 1.0)


@pytest.mark.parametrize('name', sorted(ABLATIONS))
def test_resnetd_ablation_rows(name):
    mixup_alpha, auto_augment = ABLATIONS[name]
    config = resolve(load_recipe(name), world_size=8)
    assert config['model'] == 'resnetd50' and config['global_batch_size'] == 8192
    assert config['lr'] == pytest.approx(3.2)
    assert (config['mixup_alpha'], config['auto_augment']) == (mixup_alpha, auto_augment)


def test_batch_must_divide_over_workers():
    with pytest.raises(ValueError, match='does not divide over 3 workers'):
        resolve(load_recipe('resnest50'), world_size=3)


def test_unknown_recipe_and_bad_values(tmp_path):
    with pytest.raises(ValueError, match="unknown recipe 'resnest5'.*Did you mean"):
        load_recipe('resnest5')
    bad = tmp_path / 'bad.yaml'
    bad.write_text('model: resnest50\nmixup_alpa: 0.2\n')
    with pytest.raises(ValueError, match="unknown key 'mixup_alpa' \\(did you mean mixup_alpha"):
        load_recipe(str(bad))
    bad.write_text('model: resnest51\n')
    with pytest.raises(ValueError, match="unknown model 'resnest51'"):
        load_recipe(str(bad))
    bad.write_text('model: resnest50\nepochs: 2.5\n')
    with pytest.raises(ValueError, match="bad value 2.5 for 'epochs'"):
        load_recipe(str(bad))


def _train_cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / 'recipes' / 'train.py'), *args],
                          capture_output=True, text=True, timeout=120, env=env)


def test_print_config_cli_with_overrides():
    out = _train_cli('--recipe', 'resnest101', '--print-config')
    assert out.returncode == 0, out.stderr
    config = json.loads(out.stdout)
    assert REQUIRED_KEYS <= set(config)
    assert config['lr'] == pytest.approx(1.6) and config['per_worker_batch_size'] == 4096

    out = _train_cli('--recipe', 'resnest50', '--print-config', '--global-batch-size', '512',
                     '--epochs', '90', '--auto-augment', 'false', '--crop-scale', '[0.2, 1]')
    config = json.loads(out.stdout)
    assert (config['global_batch_size'], config['lr'], config['epochs']) == (512, 0.2, 90)
    assert config['auto_augment'] is False and config['crop_scale'] == [0.2, 1.0]

    out = _train_cli('--recipe', 'resnest50', '--print-config', '--lr', '0.05')
    assert json.loads(out.stdout)['lr'] == 0.05

    import os
    env = dict(os.environ, HOROVOD_SIZE='64')
    out = _train_cli('--recipe', 'resnest200', '--print-config', env=env)
    assert json.loads(out.stdout)['per_worker_batch_size'] == 32
    out = _train_cli('--recipe', 'resnest200', '--print-config', '--per-worker-batch-size', '16',
                     env=env)
    assert json.loads(out.stdout)['global_batch_size'] == 1024
    env['HOROVOD_SIZE'] = '3'
    out = _train_cli('--recipe', 'resnest200', '--print-config', env=env)
    assert out.returncode == 2 and 'does not divide over 3 workers' in out.stderr


def test_learning_rate_formula():
    base, steps, epochs, warm = 3.2, 100, 270, 5
    # warm-up: linear from 0, reaching base at the end of epoch 5
    assert learning_rate(0, steps, base, epochs, warm) == pytest.approx(base / 500)
    assert learning_rate(249, steps, base, epochs, warm) == pytest.approx(base / 2)
    assert learning_rate(499, steps, base, epochs, warm) == pytest.approx(base)
    # cosine: half-way through the remaining 265 epochs the rate is base / 2
    for step in (600, 13749, 20000, 26999):
        t = (step + 1 - 500) / (27000 - 500)
        expected = 0.5 * base * (1 + math.cos(math.pi * t))
        assert learning_rate(step, steps, base, epochs, warm) == pytest.approx(expected)
    assert learning_rate(13749, steps, base, epochs, warm) == pytest.approx(base / 2)
    assert learning_rate(26999, steps, base, epochs, warm) == pytest.approx(0.0, abs=1e-12)


def test_dropblock_ramp():
    assert dropblock_prob(0, 270, 0.1) == pytest.approx(0.1 / 270)
    assert dropblock_prob(134, 270, 0.1) == pytest.approx(0.05)
    assert dropblock_prob(269, 270, 0.1) == pytest.approx(0.1)
