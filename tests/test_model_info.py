"""gluon_resnest.models.model_info: one record per model, and what is derived from it."""
from __future__ import annotations

import json
import re
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from PIL import Image
from tools_cli import run_tool

from conftest import randomize_norm_stats
from gluon_resnest import get_model, list_models, model_info
from gluon_resnest.complexity import PAPER_GFLOPS
from gluon_resnest.deploy import TIMM_MODEL_NAMES, eval_transform, load_image
from gluon_resnest.models import MODEL_INFO
from gluon_resnest.training import load_recipe, recipe_names, resolve

ROOT = Path(__file__).resolve().parents[1]
KEYS = {'name', 'train_crop', 'eval_crop', 'params', 'gflops', 'paper_top1', 'top1_source',
        'timm'}


def test_every_model_has_one_record():
    assert sorted(MODEL_INFO) == list_models()


@pytest.mark.parametrize('name', list_models())
def test_record(name):
    info = model_info(name.upper())
    assert set(info) == KEYS and info['name'] == name
    assert 16 <= info['train_crop'] <= info['eval_crop']
    assert info['params'] > 1_000_000 and 70 < info['paper_top1'] < 90
    assert info['top1_source'] in ('paper', 'authors', 'gluoncv')
    info['eval_crop'] = 1  # a copy: the table stays as it is
    assert model_info(name)['eval_crop'] > 1


def test_paper_crops():
    assert [model_info(f'resnest{d}')['eval_crop'] for d in (50, 101, 200, 269)] == [
        224, 256, 320, 416]
    assert [model_info(f'resnest{d}')['train_crop'] for d in (50, 101, 200, 269)] == [
        224, 224, 256, 320]


def test_readme_model_table():
    rows = {}
    for line in (ROOT / 'README.md').read_text().splitlines():
        match = re.match(r'\| `(\w+)` \| ([\d,]+) \| ([\d.]+|–) \| (\d+) / (\d+) \| '
                         r'([\d.]+) \((\w+)\) \| (?:`(\w+)`|–) \|$', line)
        if match:
            rows[match[1]] = match.groups()[1:]
    assert sorted(rows) == list_models()
    for name, (params, gflops, train, crop, top1, source, timm) in rows.items():
        info = model_info(name)
        assert int(params.replace(',', '')) == info['params'], name
        assert (None if gflops == '–' else float(gflops)) == info['gflops'], name
        assert (int(train), int(crop)) == (info['train_crop'], info['eval_crop']), name
        assert (float(top1), source, timm) == (info['paper_top1'], info['top1_source'],
                                               info['timm']), name


def test_unknown_model_names_close_ones():
    with pytest.raises(ValueError, match="unknown model 'resnest51'.*resnest50"):
        model_info('resnest51')


def test_derived_tables():
    assert PAPER_GFLOPS == {n: i['gflops'] for n, i in MODEL_INFO.items() if i['gflops']}
    assert PAPER_GFLOPS['resnest50'] == 5.39 and 'resnest101' not in PAPER_GFLOPS
    assert TIMM_MODEL_NAMES['resnest269e'] == 'resnest269'
    assert len(TIMM_MODEL_NAMES) == len(set(TIMM_MODEL_NAMES.values())) == 8


def test_recipes_take_the_crops_of_their_model():
    for name in recipe_names():
        recipe = load_recipe(name)
        config = resolve(recipe)
        if name == 'digits':  # its own data: the crops are set in the recipe
            assert (config['train_crop'], config['eval_crop']) == (32, 32)
            continue
        info = model_info(recipe.model)
        assert (config['train_crop'], config['eval_crop']) == (info['train_crop'],
                                                               info['eval_crop']), name


@pytest.mark.slow
def test_evaluate_and_predict_default_to_the_paper_crop_of_resnest269(tmp_path):
    """Without a crop option, both tools run ResNeSt-269 at 416 (paper Table 4), not 224."""
    from tools_cli import tame_residual_branches

    net = get_model('resnest269', classes=4)
    net.initialize()
    randomize_norm_stats(net, seed=3)
    tame_residual_branches(net, seed=3)
    params = tmp_path / 'net.params'
    net.save_parameters(str(params))
    rng = np.random.RandomState(0)
    image = tmp_path / 'images' / 'c0' / 'a.png'
    image.parent.mkdir(parents=True)
    Image.fromarray(rng.randint(0, 256, (500, 460, 3), np.uint8)).save(image)
    packed = run_tool('pack_rec', '--root', tmp_path / 'images', '--prefix', tmp_path / 'val',
                      '--workers', '1', '--no-progress')
    assert packed.returncode == 0, packed.stderr

    result = run_tool('evaluate', '--model', 'resnest269', '--params', params, '--rec',
                      tmp_path / 'val.rec', '--batch-size', 1, '--num-workers', 1, '--json')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)['eval_crop'] == 416

    probs = {crop: mx.nd.softmax(net(eval_transform(load_image(str(image)), crop))).asnumpy()[0]
             for crop in (416, 224)}
    # The crops are told apart: far more than the tolerance of the comparison below.
    assert np.abs(probs[416] - probs[224]).max() > 10 * 2e-4
    result = run_tool('predict', '--model', 'resnest269', '--params', params, '--top-k', 4,
                      image)
    assert result.returncode == 0, result.stderr
    printed = {int(line.split('class ')[1].split()[0]): float(line.split()[-1])
               for line in result.stdout.splitlines() if 'class ' in line}
    assert printed == pytest.approx({i: float(p) for i, p in enumerate(probs[416])}, abs=2e-4)
