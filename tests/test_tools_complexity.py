"""tools/complexity.py: parameter and multiply-accumulate counts against the paper's Table 1."""
from __future__ import annotations

import json

import mxnet as mx
import pytest
from tools_cli import load_tool, run_tool

from gluon_resnest import list_models, model_info
from gluon_resnest.complexity import PAPER_GFLOPS, count_symbol, model_complexity


def test_count_symbol_by_hand():
    data = mx.sym.var('data')
    x = mx.sym.Convolution(data, num_filter=8, kernel=(3, 3), pad=(1, 1), no_bias=True,
                           name='a')                                   # 8x8x8 out, 3*9 each
    x = mx.sym.Convolution(x, num_filter=8, kernel=(3, 3), stride=(2, 2), pad=(1, 1),
                           num_group=4, name='b')                      # 8x4x4 out, 2*9 each
    x = mx.sym.BatchNorm(x, name='bn')
    x = mx.sym.FullyConnected(x, num_hidden=5, name='fc')              # 128 -> 5
    counts = count_symbol(x, (1, 3, 8, 8))
    assert counts['conv_macs'] == 8 * 8 * 8 * 27 + 8 * 4 * 4 * 18
    assert counts['fc_macs'] == 128 * 5
    assert counts['norm_elements'] == 8 * 4 * 4
    assert counts['params'] == 8 * 27 + (8 * 18 + 8) + 2 * 8 + (128 * 5 + 5)
    assert count_symbol(x, (4, 3, 8, 8))['macs'] == counts['macs']  # per image


def test_zoo_params_match_golden_counts():
    for name in list_models():
        assert model_complexity(name)['params'] == model_info(name)['params'], name


@pytest.mark.parametrize('name', sorted(PAPER_GFLOPS))
def test_gflops_reproduce_paper_table1(name):
    row = model_complexity(name)
    # Conv + FC multiply-accumulates are within 0.5% of the paper; adding one multiply-add per
    # BatchNorm output reproduces its two decimals.
    assert abs(row['gflops'] / PAPER_GFLOPS[name] - 1) < 0.005, row
    assert round(row['gflops_bn'], 2) == PAPER_GFLOPS[name], row


def test_cli_json_and_table():
    result = run_tool('complexity', '--model', 'resnest50', 'resnetd50', '--json')
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r['model'] for r in rows] == ['resnest50', 'resnetd50']
    assert rows[0]['params'] == 27483240 and abs(rows[0]['gflops'] - 5.37) < 0.01
    table = load_tool('complexity')
    assert table.main(['--model', 'resnest14', '--input-size', '64']) == 0


def test_cli_default_lists_every_model(capsys):
    assert load_tool('complexity').main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + len(list_models())
    assert any(line.startswith('resnest50 ') and line.rstrip().endswith('5.39') for line in lines)


def test_errors(capsys):
    assert load_tool('complexity').main(['--model', 'resnest15']) == 2
    assert "unknown model 'resnest15'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        load_tool('complexity').main(['--input-size', '8'])


def test_help():
    result = run_tool('complexity', '--help')
    assert result.returncode == 0 and '--json' in result.stdout
