"""tools/evaluate.py and gluon_resnest.evaluation on a real RecordIO file."""
from __future__ import annotations

import json

import mxnet as mx
import numpy as np
import pytest
from PIL import Image
from tools_cli import load_tool, run_tool

import gluon_resnest
from conftest import randomize_norm_stats
from gluon_resnest import get_model
from gluon_resnest.data import RecordFile, decode_image
from gluon_resnest.data.records import unpack_image_record
from gluon_resnest.deploy import eval_transform, export_network
from gluon_resnest.evaluation import evaluate, topk_correct

CROP = 64


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """12 JPEG-packed images of 3 classes (tools/pack_rec.py), a resnest14 and its export."""
    folder = tmp_path_factory.mktemp('evaluate')
    rng = np.random.RandomState(0)
    for label in range(3):
        (folder / 'images' / f'c{label}').mkdir(parents=True)
        for i in range(4):
            shape = (rng.randint(60, 100), rng.randint(60, 100), 3)
            Image.fromarray(rng.randint(0, 256, shape, np.uint8)).save(
                folder / 'images' / f'c{label}' / f'{i}.png')
    result = run_tool('pack_rec', '--root', folder / 'images', '--prefix', folder / 'val',
                      '--workers', '1', '--no-progress')
    assert result.returncode == 0, result.stderr
    net = get_model('resnest14', classes=10)
    net.initialize()
    randomize_norm_stats(net, seed=7)
    net.save_parameters(str(folder / 'net.params'))
    export_network(net, str(folder / 'export' / 'net'), input_size=CROP, preprocess=True)
    return {'folder': folder, 'rec': folder / 'val.rec', 'net': net}


def reference(net, rec) -> dict:
    """Top-1/top-5 counts computed one image at a time, outside the loader."""
    records = RecordFile(str(rec))
    logits, labels = [], []
    for pos in range(len(records)):
        label, encoded = unpack_image_record(records.read(pos))
        logits.append(net(eval_transform(decode_image(encoded), CROP)).asnumpy()[0])
        labels.append(label)
    top1, top5 = topk_correct(np.stack(logits), np.array(labels))
    return {'top1': top1 / len(labels), 'top5': top5 / len(labels), 'count': len(labels)}


def test_cli_model_and_export_agree_with_reference(files):
    want = reference(files['net'], files['rec'])
    assert want['count'] == 12 and 0 < want['top5'] < 1  # a test that can tell them apart
    folder = files['folder']
    result = run_tool('evaluate', '--model', 'resnest14', '--params', folder / 'net.params',
                      '--rec', files['rec'], '--eval-crop', CROP, '--batch-size', 5, '--json',
                      '--num-workers', 1)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got['count'] == 12 and got['eval_crop'] == CROP and got['img_per_sec'] > 0
    assert got['top1'] == pytest.approx(want['top1']) and got['top5'] == pytest.approx(
        want['top5'])
    # the export normalises inside its graph; evaluate reads that and the crop from the meta
    evaluate_tool = load_tool('evaluate')
    result = run_tool('evaluate', '--prefix', folder / 'export' / 'net', '--rec', files['rec'],
                      '--batch-size', 5, '--num-workers', 0)
    assert result.returncode == 0, result.stderr
    assert f'top-1 {100 * want["top1"]:.2f}%' in result.stdout
    assert f'on 12 images at {CROP}x{CROP}' in result.stdout
    assert evaluate_tool.main(['--prefix', str(folder / 'export' / 'net'), '--rec',
                               str(files['rec']), '--num-workers', '0']) == 0


def test_evaluate_allreduce_and_padded_batches(files):
    net = files['net']
    data = mx.nd.array(np.random.RandomState(1).randn(7, 3, 32, 32))
    labels = mx.nd.array(np.arange(7) % 10)
    logits = net(data).asnumpy()
    top1, top5 = topk_correct(logits, labels.asnumpy())
    # NDArrayIter pads the last batch of 3 with 2 samples from the start: they must not count
    loader = mx.io.NDArrayIter(data, labels, batch_size=3, last_batch_handle='pad')
    result = evaluate(net, loader, progress=False)
    assert result['count'] == 7
    assert result['top1'] == pytest.approx(top1 / 7) and result['top5'] == pytest.approx(top5 / 7)
    calls = []

    def two_identical_workers(values):
        calls.append(values.copy())
        return values * 2

    loader.reset()
    summed = evaluate(net, loader, allreduce=two_identical_workers, progress=False)
    assert summed['count'] == 14 and summed['top1'] == pytest.approx(result['top1'])
    np.testing.assert_array_equal(calls[0], [top1, top5, 7])


def test_topk_correct():
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    assert topk_correct(logits, np.array([1, 0, 1]), (1, 2, 5)) == [2, 3, 3]
    assert topk_correct(logits, np.array([2, 2, 0]), (1, 2, 5)) == [0, 0, 3]


def test_errors(files, tmp_path, capsys):
    tool = load_tool('evaluate')
    params = str(files['folder'] / 'net.params')
    assert tool.main(['--model', 'resnest14', '--params', params, '--rec',
                      str(tmp_path / 'none.rec')]) == 2
    assert 'none.rec' in capsys.readouterr().err
    assert tool.main(['--model', 'resnest15', '--params', params, '--rec',
                      str(files['rec'])]) == 2
    assert "unknown model 'resnest15'" in capsys.readouterr().err
    assert tool.main(['--model', 'resnest14', '--params', str(tmp_path / 'x.params'), '--rec',
                      str(files['rec'])]) == 2
    assert 'no parameter file at' in capsys.readouterr().err
    assert tool.main(['--prefix', str(tmp_path / 'none'), '--rec', str(files['rec'])]) == 2
    assert 'no exported symbol file' in capsys.readouterr().err


def test_published_weights_at_the_models_eval_crop(files, tmp_path, monkeypatch, capsys):
    from weights_store import LoopbackStore, use_store

    tool = load_tool('evaluate')
    params = str(files['folder'] / 'net.params')
    rec = str(files['rec'])
    monkeypatch.setenv('MXNET_HOME', str(tmp_path))
    # Offline (conftest's closed port): one line naming the URL and where the file belongs.
    assert tool.main(['--model', 'resnest14', '--pretrained', '--rec', rec]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith('evaluate: error: cannot fetch http://127.0.0.1:')
    assert err[0].endswith(f'({tmp_path}/models/resnest14-7e0b0cae.params)')
    with LoopbackStore() as store:
        use_store(monkeypatch, store)
        url_path, _ = store.publish('resnest14', open(params, 'rb').read(),
                                    monkeypatch=monkeypatch)
        assert tool.main(['--model', 'resnest14', '--pretrained', '--rec', rec, '--json']) == 0
        published = json.loads(capsys.readouterr().out)
        assert store.count(url_path) == 1
    assert published['eval_crop'] == gluon_resnest.model_info('resnest14')['eval_crop'] == 224
    assert tool.main(['--model', 'resnest14', '--params', params, '--rec', rec, '--json',
                      '--eval-crop', '224']) == 0
    given = json.loads(capsys.readouterr().out)
    assert {k: published[k] for k in ('top1', 'top5', 'count')} == {
        k: given[k] for k in ('top1', 'top5', 'count')}
    for argv in (['--model', 'resnest14', '--pretrained', '--params', params],
                 ['--prefix', 'x', '--pretrained'], ['--model', 'resnest14']):
        with pytest.raises(SystemExit):
            tool.main([*argv, '--rec', rec])
        assert '--pretrained' in capsys.readouterr().err


def test_help():
    result = run_tool('evaluate', '--help')
    assert result.returncode == 0 and '--eval-crop' in result.stdout
