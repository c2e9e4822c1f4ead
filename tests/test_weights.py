"""Published weights: the table, download through a real loopback HTTP store, verification,
atomic caching, concurrent fetches, failures, the download CLI, and GluonCV's builders."""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time

import mxnet as mx
import numpy as np
import pytest
from tools_cli import ROOT, run_tool
from weights_store import LoopbackStore, leftovers, sha1, use_store

import gluon_resnest
from conftest import randomize_norm_stats
from gluon_resnest import weights
from gluon_resnest.weights import WeightsError


def _tiny_params(tmp_path, seed: int = 0, units: int = 3) -> bytes:
    """The save_parameters file of a small real network (``units * 144`` weights in its
    classifier)."""
    mx.random.seed(seed)
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Conv2D(4, 3, in_channels=3), mx.gluon.nn.Dense(units))
    net.initialize()
    net(mx.nd.zeros((1, 3, 8, 8)))
    path = tmp_path / f'tiny{seed}.params'
    net.save_parameters(str(path))
    return path.read_bytes()


@pytest.fixture(scope='module')
def r14(tmp_path_factory):
    """A resnest14 (10 classes) with random weights and BatchNorm statistics: its file's bytes,
    an input and the network's output on it."""
    net = gluon_resnest.get_model('resnest14', classes=10)
    net.initialize(mx.init.Xavier())
    randomize_norm_stats(net)
    path = tmp_path_factory.mktemp('r14') / 'resnest14.params'
    net.save_parameters(str(path))
    x = mx.nd.random.uniform(-1, 1, shape=(1, 3, 32, 32))
    return path.read_bytes(), x, net(x).asnumpy()


@pytest.fixture
def store(monkeypatch, tmp_path):
    """A loopback store the repository variables point at, and MXNET_HOME in tmp_path."""
    monkeypatch.setenv('MXNET_HOME', str(tmp_path / 'home'))
    with LoopbackStore() as served:
        use_store(monkeypatch, served)
        yield served


def _cache(tmp_path):
    return tmp_path / 'home' / 'models'


# The table --------------------------------------------------------------------------------

def test_table_is_gluoncv_and_authors_stores():
    from gluoncv.model_zoo import model_store as gcv_store
    from resnest.gluon import model_store as authors_store

    for name, entry in weights.WEIGHTS.items():
        if entry.source == 'gluoncv':
            assert entry.sha1 == gcv_store._model_sha1[name]  # noqa: SLF001
        else:
            assert entry.source == 'authors'
            assert entry.sha1 == authors_store._model_sha1[name]  # noqa: SLF001
    assert sorted(n for n, e in weights.WEIGHTS.items() if e.source == 'gluoncv') == sorted(
        n for n in gcv_store._model_sha1 if n.startswith('resnest') and '_' not in n)  # noqa
    # Every published Gluon file of the authors is here (their resnest50..269 are GluonCV's).
    for name, digest in authors_store._model_sha1.items():  # noqa: SLF001
        assert weights.WEIGHTS[name].sha1 == digest
    assert set(weights.WEIGHTS) | set(weights.NO_WEIGHTS) == set(gluon_resnest.list_models())
    assert weights.WEIGHTS['resnest50'].file_name == 'resnest50-bcfefe1d.params'


def test_models_doc_lists_the_table():
    text = (ROOT / 'docs' / 'models.md').read_text()
    rows = {}
    for line in text.split('## Published weights', 1)[1].splitlines():
        cells = [c.strip().strip('`') for c in line.strip().strip('|').split('|')]
        if len(cells) == 6 and cells[0] in gluon_resnest.list_models():
            rows[cells[0]] = cells
    assert set(rows) == set(gluon_resnest.list_models())
    for name, entry in weights.WEIGHTS.items():
        assert rows[name] == [name, {'gluoncv': 'GluonCV', 'authors': 'authors'}[entry.source],
                              entry.file_name, entry.sha1[:8], f'{entry.top1:.2f}%',
                              str(gluon_resnest.model_info(name)['eval_crop'])]
    for name in weights.NO_WEIGHTS:
        assert rows[name][1:3] == ['none', 'no published weights']


def test_urls_follow_the_repository_variables(monkeypatch):
    for var in ('MXNET_GLUON_REPO', 'GLUON_RESNEST_REPO', 'ENCODING_REPO'):
        monkeypatch.delenv(var, raising=False)
    assert weights.weights_url('resnest50') == (
        'https://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/gluon/models/'
        'resnest50-bcfefe1d.zip')
    assert weights.weights_url('resnest50_fast_2s1x64d') == (
        'https://github.com/zhanghang1989/ResNeSt/releases/download/weights_step2/'
        'resnest50_fast_2s1x64d-85eb779a.zip')
    monkeypatch.setenv('MXNET_GLUON_REPO', 'http://mirror/mx')
    monkeypatch.setenv('ENCODING_REPO', 'http://mirror/encoding/')
    assert weights.weights_url('resnest14') == 'http://mirror/mx/gluon/models/resnest14-7e0b0cae.zip'
    assert weights.weights_url('resnest50_fast_1s1x64d') == (
        'http://mirror/encoding/resnest50_fast_1s1x64d-5e16dbe5.zip')
    monkeypatch.setenv('GLUON_RESNEST_REPO', 'http://mirror/ours')
    assert weights.weights_url('resnest50_fast_1s1x64d') == (
        'http://mirror/ours/resnest50_fast_1s1x64d-5e16dbe5.zip')


def test_cache_root_is_gluoncvs(monkeypatch, tmp_path):
    monkeypatch.delenv('MXNET_HOME', raising=False)
    default = os.path.expanduser(os.path.join('~', '.mxnet', 'models'))
    assert weights.cache_root() == default
    assert weights.cache_root('~/.mxnet/models') == default
    monkeypatch.setenv('MXNET_HOME', str(tmp_path))
    assert weights.cache_root() == str(tmp_path / 'models')
    assert weights.cache_root(os.path.join('~', '.mxnet', 'models')) == str(tmp_path / 'models')
    assert weights.cache_root(tmp_path / 'mine') == str(tmp_path / 'mine')


# Downloads --------------------------------------------------------------------------------

def test_download_verify_cache_and_reuse(store, monkeypatch, tmp_path, r14):
    params, x, expected = r14
    url_path, digest = store.publish('resnest14', params, monkeypatch=monkeypatch)
    net = gluon_resnest.get_model('resnest14', pretrained=True, classes=10)
    np.testing.assert_array_equal(net(x).asnumpy(), expected)
    cached = _cache(tmp_path) / f'resnest14-{digest[:8]}.params'
    assert cached.read_bytes() == params
    assert leftovers(_cache(tmp_path)) == [cached.name]
    assert store.count(url_path) == 1
    # Cached and valid: no request, through get_model, fetch (sha1 checked) and GluonCV's tag.
    gluon_resnest.get_model('resnest14', pretrained=True, classes=10)
    assert weights.fetch('resnest14') == str(cached)
    net = gluon_resnest.get_model('resnest14', pretrained=digest[:8], classes=10)
    np.testing.assert_array_equal(net(x).asnumpy(), expected)
    assert len(store.requests) == 1


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_log_lines_elsewhere(store, monkeypatch, tmp_path, caplog):
    params = _tiny_params(tmp_path, units=6000)
    url_path, _ = store.publish('resnest14', params, monkeypatch=monkeypatch)
    with caplog.at_level(logging.INFO):
        weights.fetch('resnest14')
    lines = [r.getMessage() for r in caplog.records]
    assert f'downloading {store.url}{url_path} to ' in lines[0]
    assert any(line.startswith('resnest14-') and '4/4 (100%)' in line and line.endswith(
        '(done)') for line in lines), '\n'.join(lines)
    terminal = _Terminal()
    monkeypatch.setattr(sys, 'stderr', terminal)
    weights.fetch('resnest14', force=True)
    drawn = terminal.getvalue()
    assert 'resnest14-' in drawn and '/4 [' in drawn and 'MiB/s]' in drawn  # tqdm's bar
    assert store.count(url_path) == 2


def test_wrong_sha1_leaves_nothing(store, monkeypatch, tmp_path):
    url_path, digest = store.publish('resnest14', _tiny_params(tmp_path), monkeypatch=monkeypatch)
    other = sha1(b'another file')
    monkeypatch.setitem(weights.WEIGHTS, 'resnest14',
                        weights.PublishedWeights('resnest14', 'gluoncv', other, 0.0))
    store.files[f'/gluon/models/resnest14-{other[:8]}.zip'] = store.files[url_path]
    final = _cache(tmp_path) / f'resnest14-{other[:8]}.params'
    with pytest.raises(WeightsError, match=rf'has sha1 {digest}, not {other}') as err:
        weights.fetch('resnest14')
    assert err.value.filename == str(final)
    assert not final.exists()
    assert leftovers(_cache(tmp_path)) == []


def test_connection_closed_mid_file_then_retry(store, monkeypatch, tmp_path):
    params = _tiny_params(tmp_path)
    url_path, digest = store.publish('resnest14', params, monkeypatch=monkeypatch)
    store.faults[url_path] = ['truncate'] * 3
    final = _cache(tmp_path) / f'resnest14-{digest[:8]}.params'
    with pytest.raises(WeightsError, match=rf'cannot fetch {store.url}{url_path}: connection '
                                           rf'broken after \d+ of \d+ bytes; put the unzipped '
                                           rf'file \(sha1 {digest}\) at'):
        weights.fetch('resnest14', retries=2)
    assert store.count(url_path) == 3  # the first try and two resumptions
    assert leftovers(_cache(tmp_path)) == []
    # The next attempt, with the server well again, succeeds.
    assert weights.fetch('resnest14') == str(final)
    assert final.read_bytes() == params


@pytest.mark.parametrize('ranges', [True, False])
def test_interrupted_transfer_resumes(store, monkeypatch, tmp_path, ranges):
    params = _tiny_params(tmp_path, units=6000)  # 3.3 MiB: the client keeps whole MiBs
    url_path, digest = store.publish('resnest14', params, monkeypatch=monkeypatch)
    store.faults[url_path] = ['truncate']
    store.ranges = ranges
    path = weights.fetch('resnest14')
    assert open(path, 'rb').read() == params
    (first, no_range), (second, resumed_from) = store.requests
    assert first == second == url_path and no_range is None
    # Resumed after the last whole MiB that came (a server ignoring Range sends it all again).
    assert resumed_from == f'bytes={2 ** 20}-'
    assert leftovers(_cache(tmp_path)) == [os.path.basename(path)]


def test_404_names_url_and_path(store, tmp_path):
    url = f'{store.url}/gluon/models/resnest14-7e0b0cae.zip'
    final = _cache(tmp_path) / 'resnest14-7e0b0cae.params'
    with pytest.raises(FileNotFoundError, match=rf'cannot fetch {url}: HTTP 404 .*'
                                                rf'\({final}\)$'):
        gluon_resnest.get_model('resnest14', pretrained=True)
    assert leftovers(_cache(tmp_path)) == []


def test_corrupt_cached_file_is_downloaded_again(store, monkeypatch, tmp_path, r14):
    params, x, expected = r14
    url_path, digest = store.publish('resnest14', params, monkeypatch=monkeypatch)
    cached = _cache(tmp_path) / f'resnest14-{digest[:8]}.params'
    cached.parent.mkdir(parents=True)
    cached.write_bytes(params[:len(params) // 3])  # a truncated copy
    net = gluon_resnest.get_model('resnest14', pretrained=True, classes=10)
    np.testing.assert_array_equal(net(x).asnumpy(), expected)
    assert store.count(url_path) == 1 and cached.read_bytes() == params
    # A verified file that does not fit the network is the caller's error: no download.
    with pytest.raises(ValueError, match='does not fit resnest14'):
        gluon_resnest.get_model('resnest14', pretrained=True, classes=5)
    assert store.count(url_path) == 1


def test_unloadable_file_is_downloaded_once_then_an_error(store, monkeypatch, tmp_path):
    garbage = b'not an MXNet parameter file'
    url_path, digest = store.publish('resnest14', garbage, monkeypatch=monkeypatch)
    cached = _cache(tmp_path) / f'resnest14-{digest[:8]}.params'
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b'other garbage')
    with pytest.raises(ValueError, match='is not an MXNet parameter file'):
        gluon_resnest.get_model('resnest14', pretrained=True)
    assert store.count(url_path) == 1


def test_stale_temporaries_are_removed(store, monkeypatch, tmp_path):
    url_path, digest = store.publish('resnest14', _tiny_params(tmp_path), monkeypatch=monkeypatch)
    folder = _cache(tmp_path)
    folder.mkdir(parents=True)
    stale = folder / f'.resnest14-{digest[:8]}.k1ll3d.zip.part'
    stale.write_bytes(b'partial')
    weights.fetch('resnest14')
    assert leftovers(folder) == [f'resnest14-{digest[:8]}.params']


def test_unpublished_tag_is_fetched_and_checked_by_prefix(store, monkeypatch, tmp_path, r14):
    params, x, expected = r14
    digest = sha1(params)
    store.publish('resnest14', params)  # served, but not the table's file
    net = gluon_resnest.get_model('resnest14', pretrained=digest[:10], classes=10)
    np.testing.assert_array_equal(net(x).asnumpy(), expected)
    assert (_cache(tmp_path) / f'resnest14-{digest[:8]}.params').read_bytes() == params


def test_environment_variables(store, monkeypatch, tmp_path):
    tiny = _tiny_params(tmp_path)
    path, digest = store.publish('resnest50_fast_1s1x64d', tiny, source='authors',
                                 monkeypatch=monkeypatch)
    # GLUON_RESNEST_REPO (set by use_store) serves the authors' files ...
    got = weights.fetch('resnest50_fast_1s1x64d')
    assert got == str(_cache(tmp_path) / f'resnest50_fast_1s1x64d-{digest[:8]}.params')
    # ... ENCODING_REPO when it is not set; MXNET_HOME and root choose the folder.
    monkeypatch.delenv('GLUON_RESNEST_REPO')
    monkeypatch.setenv('ENCODING_REPO', store.url + '/authors/')
    monkeypatch.setenv('MXNET_HOME', str(tmp_path / 'other'))
    got = weights.fetch('resnest50_fast_1s1x64d')
    assert got.startswith(str(tmp_path / 'other' / 'models') + os.sep)
    got = weights.fetch('resnest50_fast_1s1x64d', root=tmp_path / 'mine')
    assert got.startswith(str(tmp_path / 'mine') + os.sep)
    assert store.count(path) == 3
    # MXNET_GLUON_REPO serves GluonCV's files.
    path, _ = store.publish('resnest26', tiny, monkeypatch=monkeypatch)
    weights.fetch('resnest26')
    assert store.count(path) == 1


def test_no_published_weights_and_own_files(store, tmp_path, r14):
    with pytest.raises(WeightsError, match=r'resnetd50 has no published weights \(neither '
                                           r'GluonCV nor the authors.*put it at \(.*/resnetd50'
                                           r'\.params\)$'):
        gluon_resnest.get_model('resnetd50', pretrained=True, root=str(tmp_path))
    # A NAME.params put in the cache by hand is read first, for any model.
    params, x, expected = r14
    (tmp_path / 'resnest14.params').write_bytes(params)
    net = gluon_resnest.get_model('resnest14', pretrained=True, root=str(tmp_path), classes=10)
    np.testing.assert_array_equal(net(x).asnumpy(), expected)
    assert store.requests == []


_CHILD = '''
import logging, sys
from gluon_resnest import weights
logging.basicConfig(level=logging.INFO, format='%(message)s')
weights.WEIGHTS['resnest14'] = weights.PublishedWeights('resnest14', 'gluoncv', sys.argv[1], 0)
print(weights.fetch('resnest14'))
'''


@pytest.mark.slow
def test_two_processes_fetch_the_same_file(store, monkeypatch, tmp_path):
    params = _tiny_params(tmp_path)
    url_path, digest = store.publish('resnest14', params)
    store.faults[url_path] = ['hold']  # the first request waits until the second process waits
    logs = [tmp_path / 'a.log', tmp_path / 'b.log']
    procs = []
    for log in logs:
        procs.append(subprocess.Popen([sys.executable, '-c', _CHILD, digest], cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=log.open('w'), text=True))
        if log is logs[0]:
            assert store.arrived.wait(60), 'the first process made no request'
    deadline = time.monotonic() + 60
    while 'waiting for another process' not in logs[1].read_text():
        assert time.monotonic() < deadline and procs[1].poll() is None, logs[1].read_text()
        time.sleep(0.05)
    store.release.set()
    outputs = [proc.communicate(timeout=60)[0].strip() for proc in procs]
    final = str(_cache(tmp_path) / f'resnest14-{digest[:8]}.params')
    assert [proc.returncode for proc in procs] == [0, 0], [log.read_text() for log in logs]
    assert outputs == [final, final]
    assert open(final, 'rb').read() == params
    assert store.count(url_path) == 1
    assert leftovers(_cache(tmp_path)) == [os.path.basename(final)]


# The download tool ------------------------------------------------------------------------

def _offline_line(tmp_path) -> str:
    url = weights.weights_url('resnest14')
    assert url.startswith('http://127.0.0.1:')  # conftest: a closed loopback port
    return (f'download: error: cannot fetch {url}: Connection refused; put the unzipped file '
            f'(sha1 {weights.WEIGHTS["resnest14"].sha1}) at ({tmp_path}/resnest14-7e0b0cae.params)')


def test_cli_offline_is_one_line_exit_2(tmp_path, capsys):
    from gluon_resnest.cli.download import main

    assert main(['resnest14', '--root', str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [_offline_line(tmp_path)] and captured.out == ''
    assert os.listdir(tmp_path) == ['resnest14-7e0b0cae.lock']


@pytest.mark.slow
def test_cli_script_offline(tmp_path):
    result = run_tool('download', 'resnest14', '--root', tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [_offline_line(tmp_path)] and result.stdout == ''


def test_cli_download_and_list(store, monkeypatch, tmp_path, capsys):
    from gluon_resnest.cli.download import main

    tiny = _tiny_params(tmp_path)
    path14, d14 = store.publish('resnest14', tiny, monkeypatch=monkeypatch)
    _, d26 = store.publish('resnest26', tiny, monkeypatch=monkeypatch)
    root = tmp_path / 'cli'
    assert main(['resnest14', '--root', str(root)]) == 0
    assert main(['resnest14', '--root', str(root)]) == 0  # cached and verified: no request
    assert store.count(path14) == 1
    (root / f'resnest26-{d26[:8]}.params').write_bytes(b'damaged')
    capsys.readouterr()
    assert main(['--list', '--root', str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f'cache: {root}'
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert rows['resnest14'] == ['resnest14', 'gluoncv', f'resnest14-{d14[:8]}.params',
                                 'verified']
    assert rows['resnest26'][1:] == ['gluoncv', f'resnest26-{d26[:8]}.params', 'sha1',
                                     'differs']
    assert rows['resnest50_fast_4s2x40d'][1:] == ['authors', 'resnest50_fast_4s2x40d-b24d5157'
                                                  '.params', 'absent']
    assert rows['resnetd50'] == ['resnetd50', '-', '-', 'no', 'published', 'weights']
    assert main(['--list', '--json', '--root', str(root)]) == 0
    listed = {r['name']: r for r in json.loads(capsys.readouterr().out)['models']}
    assert listed['resnest14']['url'] == f'{store.url}{path14}'
    assert listed['resnest26']['state'] == 'sha1 differs'
    # A damaged cached file is replaced by the tool.
    assert main(['resnest26', '--root', str(root)]) == 0
    assert (root / f'resnest26-{d26[:8]}.params').read_bytes() == tiny


def test_cli_usage_errors(capsys):
    from gluon_resnest.cli.download import main

    for argv, message in [([], 'give model names or --all'),
                          (['--all', 'resnest50'], 'give model names or --all'),
                          (['--list', 'resnest50'], '--list takes no model names')]:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
    assert main(['resnest51']) == 2
    assert "unknown model 'resnest51'" in capsys.readouterr().err
    assert main(['resnetd50']) == 2
    assert 'resnetd50 has no published weights' in capsys.readouterr().err


# GluonCV's builders under the override ----------------------------------------------------

@pytest.fixture(scope='module')
def r50_file(tmp_path_factory):
    """A resnest50 with GluonCV's defaults and random weights, saved: (bytes, path)."""
    net = gluon_resnest.get_model('resnest50', dropblock_prob=0.1)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 32, 32)))
    randomize_norm_stats(net)
    path = tmp_path_factory.mktemp('r50') / 'resnest50.params'
    net.save_parameters(str(path))
    return path.read_bytes(), path


def _backbone_matches(seg, params_path) -> None:
    saved = mx.nd.load(str(params_path))
    got = seg.layer4._collect_params_with_prefix()  # noqa: SLF001
    for key in ('0.conv2.conv.weight', '2.bn3.running_var'):
        np.testing.assert_array_equal(got[key].data().asnumpy(), saved[f'layer4.{key}'].asnumpy())


@pytest.mark.slow
def test_gluoncv_segmentation_downloads_its_backbone(store, monkeypatch, tmp_path, r50_file):
    from gluoncv import model_zoo

    params, params_path = r50_file
    url_path, _ = store.publish('resnest50', params, monkeypatch=monkeypatch)
    with gluon_resnest.gluoncv_override():
        seg = model_zoo.get_model('deeplab_resnest50_ade')  # GluonCV's pretrained_base=True
    assert isinstance(seg.layer4, mx.gluon.nn.HybridSequential)
    _backbone_matches(seg, params_path)
    assert store.count(url_path) == 1


@pytest.mark.slow
def test_gluoncv_segmentation_reads_the_cached_file(store, tmp_path, r50_file):
    from gluoncv import model_zoo

    params, params_path = r50_file
    cached = _cache(tmp_path) / 'resnest50-bcfefe1d.params'  # GluonCV's own file name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(params)
    with gluon_resnest.gluoncv_override():
        seg = model_zoo.get_model('deeplab_resnest50_ade')
    _backbone_matches(seg, params_path)
    assert store.requests == []


def test_gluoncv_builder_downloads(store, monkeypatch, r14):
    from gluoncv import model_zoo

    params, x, expected = r14
    url_path, _ = store.publish('resnest14', params, monkeypatch=monkeypatch)
    with gluon_resnest.gluoncv_override():
        net = model_zoo.get_model('resnest14', pretrained=True, classes=10)
    np.testing.assert_array_equal(net(x).asnumpy(), expected)
    assert store.count(url_path) == 1


def test_gluoncv_builder_offline_error(tmp_path, monkeypatch):
    from gluoncv import model_zoo

    monkeypatch.delenv('MXNET_HOME', raising=False)
    with gluon_resnest.gluoncv_override():
        with pytest.raises(WeightsError, match=r'cannot fetch http://127\.0\.0\.1:\d+/gluon/'
                                               r'models/resnest14-7e0b0cae\.zip: Connection '
                                               r'refused'):
            model_zoo.get_model('resnest14', pretrained=True, root=str(tmp_path))
