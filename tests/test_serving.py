"""Serving with MXNet Model Server: tools/archive_mms.py archives, a real server on loopback ports,
real image files sent concurrently, answers checked against tools/predict.py --json."""
from __future__ import annotations

import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import mxnet as mx
import numpy as np
import pytest
from PIL import Image
from tools_cli import ROOT, load_tool, run_tool

from conftest import randomize_norm_stats
from gluon_resnest import get_model
from gluon_resnest.deploy import export_network

NAMES = [f'digit {i}' for i in range(10)]
SIZE = 32
BATCH = 8


def _mms_available() -> bool:
    try:
        import mms  # noqa: F401
        import model_archiver  # noqa: F401
    except ImportError:
        return False
    return bool(shutil.which('java') or os.environ.get('JAVA_HOME'))


def _free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now, below 32767 (MMS refuses higher ones)."""
    rng = random.Random(os.getpid())
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randrange(20000, 32767)
        with socket.socket() as sock:
            try:
                sock.bind(('127.0.0.1', port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


def _images(folder) -> list[str]:
    """PNG and JPEG files of several sizes, colour and grey, with varied content."""
    rng = np.random.RandomState(1)
    paths = []
    for i, (h, w) in enumerate([(40, 40), (37, 52), (64, 33), (90, 120), (33, 33), (48, 71)]):
        arr = np.full((h, w, 3), rng.randint(0, 256, 3), np.uint8)
        for _ in range(5):
            y, x = rng.randint(0, h - 8), rng.randint(0, w - 8)
            arr[y:y + rng.randint(4, 16), x:x + rng.randint(4, 16)] = rng.randint(0, 256, 3)
        img = Image.fromarray(arr if i != 4 else arr[..., 0])
        path = str(folder / f'img{i}.{"jpg" if i % 2 else "png"}')
        img.save(path, quality=92) if i % 2 else img.save(path)
        paths.append(path)
    return paths


def _quantized(prefix: str, folder) -> str:
    """An INT8 export of ``prefix``, calibrated on a RecordIO file of JPEGs."""
    from gluon_resnest.deploy import quantize_export

    rec = str(folder / 'calib.rec')
    writer = mx.recordio.MXIndexedRecordIO(str(folder / 'calib.idx'), rec, 'w')
    rng = np.random.RandomState(2)
    for i in range(16):
        buf = io.BytesIO()
        Image.fromarray(rng.randint(0, 256, (40, 40, 3), np.uint8)).save(buf, format='JPEG')
        writer.write_idx(i, mx.recordio.pack(mx.recordio.IRHeader(0, i % 10, i, 0),
                                             buf.getvalue()))
    writer.close()
    output = str(folder / 'int8' / 'tiny-int8')
    quantize_export(prefix, rec, output, num_calib_examples=16, batch_size=8, num_workers=1)
    return output


def _multipart(field: str, filename: str, content: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode() + content + f'\r\n--{boundary}--\r\n'.encode()
    return body, f'multipart/form-data; boundary={boundary}'


def _same(answer: list[dict], expected: list[dict]) -> None:
    """Same classes in the same order; probabilities equal to float32 rounding."""
    assert [(a['index'], a['class']) for a in answer] == \
        [(e['index'], e['class']) for e in expected]
    np.testing.assert_allclose([a['probability'] for a in answer],
                               [e['probability'] for e in expected], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(not _mms_available(), reason='needs MMS, model-archiver and Java '
                                                 '(make serve-env)')
def test_server_answers_like_predict(tmp_path):
    from gluon_resnest.deploy.serving import ModelServer

    net = get_model('resnest14', classes=len(NAMES), stem_width=16)
    net.initialize(mx.init.Xavier(magnitude=2))
    randomize_norm_stats(net, seed=4)
    prefix = str(tmp_path / 'export' / 'tiny')
    export_network(net, prefix, input_size=SIZE, classes=NAMES)
    int8_prefix = _quantized(prefix, tmp_path)
    store = tmp_path / 'store'
    for name, source in (('tiny', prefix), ('tiny-int8', int8_prefix)):
        result = run_tool('archive_mms', '--prefix', source, '--output', store / f'{name}.mar')
        assert result.returncode == 0, result.stderr
    images = _images(tmp_path)
    expected = {}
    for name, source in (('tiny', prefix), ('tiny-int8', int8_prefix)):
        result = run_tool('predict', '--prefix', source, '--json', *images)
        assert result.returncode == 0, result.stderr
        expected[name] = json.loads(result.stdout)
    assert len(expected['tiny']) == len(images)

    files = {path: open(path, 'rb').read() for path in images}  # noqa: SIM115
    with open(images[1], 'rb') as handle:
        truncated = handle.read()[:200]
    bad = {'truncated JPEG': truncated, 'empty body': b'', 'JSON': b'{"image": "cat.jpg"}',
           'text': b'not an image at all'}
    # Every model gets a multiple of BATCH requests, in order, from BATCH threads: each
    # round is exactly one batch (the server waits up to 5 s for a batch to fill), mixing
    # good and bad images.
    labels = list(bad)
    requests = [('tiny', key) for key in images + labels[:2] + images + labels[2:]]
    requests += [('tiny-int8', key) for key in images + labels[1:3]]
    rounds = {name: sum(n == name for n, _ in requests) / BATCH for name in ('tiny', 'tiny-int8')}
    assert rounds == {'tiny': 2, 'tiny-int8': 1}

    port, management = _free_ports(2)
    server = ModelServer(str(store), port=port, management_port=management)
    try:
        server.start()
        for name in ('tiny', 'tiny-int8'):
            server.register(f'{name}.mar', batch_size=BATCH, max_batch_delay=5000)
        status, body = server.request('GET', '/models/tiny', management=True)
        assert status == 200 and json.loads(body)['batchSize'] == BATCH
        processes = server.pids()
        assert len(processes) >= 3  # launcher, Java, a worker per model

        def send(item: tuple[str, str]) -> tuple[int, dict | list]:
            name, key = item
            status, body = server.request(
                'POST', f'/predictions/{name}', files.get(key, bad.get(key)),
                headers={'Content-Type': 'application/octet-stream'})
            return status, json.loads(body)

        with ThreadPoolExecutor(BATCH) as pool:
            answers = list(pool.map(send, requests))
        for (name, key), (status, answer) in zip(requests, answers):
            if key in files:
                assert status == 200, (name, key, answer)
                _same(answer, expected[name][key])
            else:
                assert status == 400, (name, key, answer)
                assert answer['code'] == 400 and answer['type'] == 'InvalidImage'
                assert 'cannot read the request body as an image' in answer['message']

        # A multipart upload (curl -F data=@FILE) is answered like the raw body, and the
        # workers that saw the bad images are the ones still answering.
        body, content_type = _multipart('data', 'img.png', files[images[0]])
        status, reply = server.request('POST', '/predictions/tiny', body,
                                       headers={'Content-Type': content_type})
        assert status == 200
        _same(json.loads(reply), expected['tiny'][images[0]])
        assert server.pids() == processes
        # MMS logs what its workers print (each line twice, with the same time stamp),
        # among it the handler's line per batch.
        with open(os.path.join(server.workdir, 'logs', 'mms_log.log')) as handle:
            batches = {line for line in handle if f'batch of {BATCH} requests' in line}
        assert len(batches) == sum(rounds.values())
        workdir = server.workdir
    finally:
        server.stop()
    assert not [pid for pid in processes if _alive(pid)]
    assert not os.path.exists(workdir)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_archive_errors(tmp_path, capsys):
    archive = load_tool('archive_mms')
    missing = str(tmp_path / 'none')
    assert archive.main(['--prefix', missing, '--output', str(tmp_path / 'a.mar')]) == 2
    err = capsys.readouterr().err
    assert err.startswith('archive_mms: error: ') and err.count('\n') == 1
    assert archive.main(['--prefix', missing, '--output', str(tmp_path / 'a.zip')]) == 2
    assert 'must end in .mar' in capsys.readouterr().err
    assert archive.main(['--prefix', missing, '--output', str(tmp_path / 'a b.mar')]) == 2
    assert "model name 'a b'" in capsys.readouterr().err


def test_predict_json_matches_text(tmp_path, capsys):
    net = get_model('resnest14', classes=len(NAMES), stem_width=16)
    net.initialize(mx.init.Xavier(magnitude=2))
    randomize_norm_stats(net, seed=4)
    prefix = str(tmp_path / 'tiny')
    export_network(net, prefix, input_size=SIZE, classes=NAMES)
    images = _images(tmp_path)[:2]
    predict = load_tool('predict')
    assert predict.main(['--prefix', prefix, '--json', '--top-k', '3', *images]) == 0
    got = json.loads(capsys.readouterr().out)
    assert predict.main(['--prefix', prefix, '--top-k', '3', *images]) == 0
    text = capsys.readouterr().out
    assert list(got) == images
    lines = [line.split() for line in text.splitlines() if line.startswith('  ')]
    flat = [entry for path in images for entry in got[path]]
    assert len(lines) == len(flat) == 6
    for line, entry in zip(lines, flat):
        assert ' '.join(line[1:-1]) == entry['class'] == NAMES[entry['index']]
        assert float(line[-1]) == pytest.approx(entry['probability'], abs=5e-5)
    probs = [entry['probability'] for entry in got[images[0]]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1


def test_handler_sees_the_pixels_predict_sees(tmp_path):
    """A request body becomes the same network input as the same file given to predict."""
    from gluon_resnest.deploy import eval_transform, load_image
    from gluon_resnest.deploy.serving import ImageClassifier

    net = get_model('resnest14', classes=len(NAMES), stem_width=16)
    net.initialize(mx.init.Xavier(magnitude=2))
    prefix = str(tmp_path / 'tiny')
    export_network(net, prefix, input_size=SIZE, classes=NAMES)
    classifier = ImageClassifier(prefix)
    images = _images(tmp_path)
    assert {path.rsplit('.', 1)[1] for path in images} == {'png', 'jpg'}
    for path in images:
        with open(path, 'rb') as handle:
            served = classifier.transform(handle.read()).asnumpy()
        predicted = eval_transform(load_image(path), SIZE, classifier.mean,
                                   classifier.std).asnumpy()
        np.testing.assert_array_equal(served, predicted, err_msg=path)


def test_archive_of_a_native_export_fails_where_its_operators_cannot_load(tmp_path):
    """An export that calls gluon_resnest's native operators is refused at archive time where
    they cannot be loaded (here: GLUON_RESNEST_NATIVE=0), before model-archiver runs."""
    prefix = str(tmp_path / 'native')
    nodes = [{'op': 'null', 'name': 'data', 'inputs': []},
             {'op': 'gluon_resnest_sa_gap', 'name': 'gap', 'attrs': {'radix': '2'},
              'inputs': [[0, 0, 0]]}]
    with open(f'{prefix}-symbol.json', 'w', encoding='utf-8') as handle:
        json.dump({'nodes': nodes, 'arg_nodes': [0], 'node_row_ptr': [0, 1, 2],
                   'heads': [[1, 0, 0]], 'attrs': {'mxnet_version': ['int', 10901]}}, handle)
    mx.nd.save(f'{prefix}-0000.params', {})
    env = dict(os.environ, GLUON_RESNEST_NATIVE='0')
    proc = subprocess.run([sys.executable, str(ROOT / 'tools' / 'archive_mms.py'),
                           '--prefix', prefix, '--output', str(tmp_path / 'n.mar')],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "calls gluon_resnest's native operators (gluon_resnest_sa_gap)" in proc.stderr
    assert 'GLUON_RESNEST_NATIVE=0' in proc.stderr
    assert not (tmp_path / 'n.mar').exists()
