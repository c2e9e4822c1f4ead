"""gluon_resnest.models.model_info: one record per model, and what is derived from it."""
from __future__ import annotations

import ast
import dataclasses
import inspect
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
from gluon_resnest.constants import CROP_RATIO, DEFAULT_CROP
from gluon_resnest.deploy import TIMM_MODEL_NAMES, eval_transform, load_image
from gluon_resnest.models import MODEL_CONFIGS, MODEL_INFO, MODEL_SPECS, model_spec
from gluon_resnest.registry import lookup
from gluon_resnest.training import load_recipe, recipe_names, resolve

ROOT = Path(__file__).resolve().parents[1]
KEYS = {'name', 'train_crop', 'eval_crop', 'crop_ratio', 'params', 'paper_params', 'gflops',
        'paper_top1', 'top1_source', 'paper_table', 'timm'}


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


def test_one_table():
    """MODEL_CONFIGS and MODEL_INFO are views of MODEL_SPECS, whose records cannot change."""
    assert sorted(MODEL_SPECS) == sorted(MODEL_CONFIGS) == list_models()
    for name, spec in MODEL_SPECS.items():
        assert spec.name == name and model_spec(name.upper()) is spec
        assert MODEL_CONFIGS[name] is spec.config
        assert {'name': name, **MODEL_INFO[name]} == model_info(name)
        assert spec.crop_ratio == CROP_RATIO
    with pytest.raises(dataclasses.FrozenInstanceError):
        MODEL_SPECS['resnest50'].eval_crop = 256
    with pytest.raises(ValueError, match='unknown model'):
        model_spec('resnest51')


def test_the_networks_are_built_from_the_table():
    net = get_model('resnest50_fast_1s4x24d')
    config = MODEL_SPECS['resnest50_fast_1s4x24d'].config
    assert (config.radix, config.cardinality, config.bottleneck_width) == (1, 4, 24)
    conv2 = net.layer1[0].conv2
    assert (conv2.radix, conv2.cardinality, conv2.channels) == (1, 4, 96)


def test_paper_figures_are_the_papers_rows():
    """A row of the paper has its table, printed parameter count and GFLOPs (Table 1 only);
    the printed count (``27.5M``) is the counted one to within one unit of its last digit."""
    for name, spec in MODEL_SPECS.items():
        if spec.top1_source != 'paper':
            assert (spec.paper_table, spec.paper_params, spec.gflops) == (None, None, None), name
            continue
        assert spec.paper_table in ('Table 1 (left)', 'Table 1 (right)', 'Table 2'), name
        assert (spec.gflops is None) == (spec.paper_table == 'Table 2'), name
        decimals = len(str(spec.paper_params).partition('.')[2])
        unit = 10.0 ** -decimals
        assert abs(round(spec.params / 1e6, decimals) - spec.paper_params) <= unit + 1e-9, name
    # 26,217,896 counted; the paper prints 26.3M for 1s1x64d.
    assert MODEL_SPECS['resnest50_fast_1s1x64d'].paper_params == 26.3


_FIGURES = re.compile(
    r"(?P<where>Paper, (?P<table>Table 1 \((?:left|right)\)|Table 2)|GluonCV's model zoo|"
    r"The authors' model zoo): (?:(?P<paper_params>[\d.]+)M parameters, )?"
    r"(?:(?P<gflops>[\d.]+) GFLOPs, )?(?P<top1>[\d.]+)% top-1 at (?P<crop>\d+)\.\s+"
    r"Counted: (?P<params>[\d,]+) parameters\.")
_ARCH = re.compile(r'layers (\d+),(\d+),(\d+),(\d+), (\d+)s(\d+)x(\d+)d\b')


@pytest.mark.parametrize('name', list_models())
def test_builder_docstring_figures_are_the_tables(name):
    """Each builder's docstring states the paper's figures as the paper's, the parameter count
    as counted, and the architecture, each equal to the table's."""
    spec = MODEL_SPECS[name]
    doc = inspect.getdoc(lookup(name))
    match = _FIGURES.search(doc)
    assert match, f'{name}: no figures in its docstring:\n{doc}'
    assert len(_FIGURES.findall(doc)) == 1, name
    where = {'paper': 'Paper', 'gluoncv': "GluonCV's model zoo",
             'authors': "The authors' model zoo"}[spec.top1_source]
    assert match['where'].startswith(where), name
    assert match['table'] == spec.paper_table, name
    assert (float(match['paper_params']) if match['paper_params'] else None) == (
        None if spec.paper_params is None else float(spec.paper_params)), name
    assert (float(match['gflops']) if match['gflops'] else None) == spec.gflops, name
    assert (float(match['top1']), int(match['crop'])) == (spec.paper_top1, spec.eval_crop), name
    assert int(match['params'].replace(',', '')) == spec.params, name
    arch = _ARCH.search(doc)
    assert arch, f'{name}: no layers/variant in its docstring'
    config = spec.config
    assert tuple(int(v) for v in arch.groups()) == (
        *config.layers, config.radix, config.cardinality, config.bottleneck_width), name


def test_default_crop_is_the_papers():
    assert DEFAULT_CROP == 224 and CROP_RATIO == 0.875
    assert sum(s.eval_crop == DEFAULT_CROP for s in MODEL_SPECS.values()) == 11


def _default_literals(tree: ast.AST):
    """(line, value) of each int/float literal given as a default: of a parameter, of an
    argparse ``default=``, or inside a tuple default."""
    for node in ast.walk(tree):
        defaults = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            defaults = [*node.args.defaults, *(d for d in node.args.kw_defaults if d)]
        elif isinstance(node, ast.keyword) and node.arg == 'default':
            defaults = [node.value]
        for default in defaults:
            for leaf in ast.walk(default):
                if isinstance(leaf, ast.Constant) and type(leaf.value) in (int, float):
                    yield leaf.lineno, leaf.value


def test_the_paper_transform_constants_are_read_not_repeated():
    """0.875 is written once (gluon_resnest.constants) and no default of the library is a
    literal 224: each reads DEFAULT_CROP or CROP_RATIO."""
    package = ROOT / 'gluon_resnest'
    found = []
    for path in sorted(package.rglob('*.py')):
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(), rel)
        if rel != 'gluon_resnest/constants.py':
            found += [(rel, node.lineno) for node in ast.walk(tree)
                      if isinstance(node, ast.Constant) and node.value == CROP_RATIO
                      and type(node.value) is float]
        # GluonCV's ResNeSt signature, mirrored with GluonCV's own defaults.
        if rel != 'gluon_resnest/gluoncv_adapters.py':
            found += [(rel, line) for line, value in _default_literals(tree)
                      if value == DEFAULT_CROP]
    assert not found, f'literal 0.875 or default 224 outside gluon_resnest.constants: {found}'


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
