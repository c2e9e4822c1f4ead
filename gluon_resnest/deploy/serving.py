"""Serving an export over HTTP with MXNet Model Server (MMS).

An archive written by ``tools/archive_mms.py`` holds an export (FP32 or INT8) under the prefix
:data:`ARCHIVE_PREFIX` and names :func:`handle` as its handler, so the server runs this module
in its Python workers; the server's Python needs ``gluon_resnest`` installed. Each request
carries one encoded image (the raw request body, or one multipart file field). The handler
turns it into pixels exactly as ``tools/predict.py`` does a file
(:func:`gluon_resnest.data.pack.image_pixels`, the body of
:func:`gluon_resnest.deploy.load_image`), applies the paper's evaluation
transform (:func:`gluon_resnest.deploy.eval_transform`) with the crop and normalisation of the
export's meta file, runs every image of an MMS batch through the network at once, and answers
with the top-5 classes::

    [{"index": 3, "class": "3", "probability": 0.97}, ...]

A request whose body is not a readable image gets HTTP 400 and
``{"code": 400, "type": "InvalidImage", "message": "..."}``; the other requests of the same
batch are answered normally and the worker keeps running.

:class:`ModelServer` starts and stops MMS itself: loopback addresses, a private working folder
for its logs, sockets and unpacked archives, and the whole process tree (Java front end and
Python workers) stopped together.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from typing import Any, Sequence

import mxnet as mx
import numpy as np

from .. import threads
from ..data.pack import image_pixels
from .export import load_exported
from .inference import optimize_for_inference
from .preprocess import eval_transform, load_class_names

__all__ = ['ARCHIVE_PREFIX', 'ImageClassifier', 'ModelServer', 'handle', 'ranked']

logger = logging.getLogger(__name__)

#: Prefix of the export inside an archive (``model-symbol.json``, ``model-0000.params``, ...).
ARCHIVE_PREFIX = 'model'
#: Classes returned per image.
TOP_K = 5
#: Where MMS finds :func:`handle` (``module:function``).
HANDLER = f'{__name__}:handle'
#: MMS refuses ports from this one up.
MAX_PORT = 32767


def ranked(probs: np.ndarray, names: Sequence[str] | None = None,
           k: int = TOP_K) -> list[dict[str, Any]]:
    """The ``k`` most probable classes, best first: ``{"index", "class", "probability"}``.

    Ties keep the lower index first. ``class`` is None without class names.
    """
    order = np.argsort(-probs, kind='stable')[:k]
    return [{'index': int(i), 'class': names[i] if names is not None else None,
             'probability': float(probs[i])} for i in order]


class ImageClassifier:
    """An export (FP32 or INT8) that classifies encoded images, a batch at a time.

    Args:
        prefix: The export's prefix.
        classes: File with one class name per line; by default the export's own.
    """

    def __init__(self, prefix: str, classes: str | None = None) -> None:
        net, meta = load_exported(prefix)
        self.crop = int(meta['input_size'])
        self.mean, self.std = (None, None) if meta['preprocess'] else (meta['mean'], meta['std'])
        if classes is None and meta.get('class_names'):
            classes = os.path.join(os.path.dirname(prefix), meta['class_names'])
        self.names = load_class_names(classes) if classes else None
        channels = int(meta.get('in_channels') or 3)
        # An INT8 export is already fused by the quantizer; only plan its memory.
        backend = None if meta.get('quantized') else 'MKLDNN'
        self.net = optimize_for_inference(net, batch_size=1, input_size=self.crop,
                                          in_channels=channels, backend=backend)
        outputs = int(self.net(mx.nd.zeros((1, channels, self.crop, self.crop))).shape[1])
        if self.names is not None and len(self.names) != outputs:
            raise ValueError(f'{len(self.names)} class names for {outputs} outputs ({classes})')

    def transform(self, encoded: bytes) -> mx.nd.NDArray:
        """One encoded image as a ``(1, 3, crop, crop)`` batch; ValueError when unreadable."""
        return eval_transform(image_pixels(encoded), self.crop, self.mean, self.std)

    def classify(self, batch: Sequence[mx.nd.NDArray], k: int = TOP_K) -> list[list[dict]]:
        """Top-``k`` classes (:func:`ranked`) of each transformed image, in one forward pass."""
        # A transform to a crop above 258 pixels copies 200,000 elements or more on this thread,
        # which gives it an OpenMP team that slows the engine's (release_openmp_team).
        threads.release_openmp_team()
        probs = mx.nd.softmax(self.net(mx.nd.concat(*batch, dim=0))).asnumpy()
        return [ranked(row, self.names, k) for row in probs]


class _BadRequestError(ValueError):
    """A request the handler answers with HTTP 400."""


def _payload(request: dict[str, Any]) -> bytes:
    """The image bytes of one MMS request: the raw body, or its only file field."""
    for key in ('body', 'data'):
        if key in request:
            value = request[key]
            break
    else:
        files = [v for v in request.values() if isinstance(v, (bytes, bytearray))]
        if len(files) != 1:
            raise _BadRequestError(f'send one image, as the request body or one multipart field '
                              f'(got {len(files)} binary fields)')
        value = files[0]
    if not isinstance(value, (bytes, bytearray)):
        raise _BadRequestError('send the image file itself as the request body '
                          '(e.g. curl -T image.jpg), not a form or JSON value')
    return bytes(value)


def _error(code: int, kind: str, message: str) -> str:
    return json.dumps({'code': code, 'type': kind, 'message': message})


_service: ImageClassifier | None = None


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[str] | None:
    """MMS entry point: load the archived export (``data`` None), or answer a batch of requests.

    Args:
        data: One dict per request (MMS's batch), or None when the worker starts.
        context: MMS's context: ``system_properties['model_dir']`` is the unpacked archive;
            per-request status codes and content types are set on it.

    Returns:
        One JSON document per request, in order.
    """
    global _service
    if data is None:
        model_dir = context.system_properties['model_dir']
        _service = ImageClassifier(os.path.join(model_dir, ARCHIVE_PREFIX))
        logger.info('loaded %s (crop %d, %s classes)', model_dir, _service.crop,
                    len(_service.names) if _service.names else 'unnamed')
        return None
    replies: list[str | None] = [None] * len(data)
    good, batch = [], []
    for idx, request in enumerate(data):
        context.set_response_content_type(idx, 'application/json')
        try:
            batch.append(_service.transform(_payload(request)))
            good.append(idx)
        except _BadRequestError as err:
            context.set_response_status(400, 'Bad Request', idx)
            replies[idx] = _error(400, 'BadRequest', str(err))
        except ValueError as err:
            context.set_response_status(400, 'Bad Request', idx)
            replies[idx] = _error(400, 'InvalidImage',
                                  f'cannot read the request body as an image: {err}')
    if batch:
        for idx, top in zip(good, _service.classify(batch)):
            replies[idx] = json.dumps(top)
    logger.info('batch of %d requests: %d classified, %d rejected', len(data), len(batch),
                len(data) - len(batch))
    return replies


class ModelServer:
    """MMS on loopback ports, serving the archives of one folder, as a context manager.

    Everything MMS writes (configuration, logs, metrics, the worker sockets, unpacked archives)
    goes to a private working folder, removed by :meth:`stop` unless one was given.

    Args:
        model_store: Folder of ``.mar`` archives.
        port: Inference port (``/ping``, ``/predictions/NAME``).
        management_port: Management port (``/models``); default ``port + 1``.
        host: Address both ports bind to.
        workdir: Working folder to use (kept); default a new temporary one (removed).
        log: File that receives MMS's console output; default ``WORKDIR/console.log``.
    """

    def __init__(self, model_store: str, port: int = 8080, management_port: int | None = None,
                 host: str = '127.0.0.1', workdir: str | None = None,
                 log: str | None = None) -> None:
        self.model_store = os.path.abspath(model_store)
        self.host, self.port = host, int(port)
        self.management_port = int(management_port or port + 1)
        for value in (self.port, self.management_port):
            if not 0 < value < MAX_PORT:
                raise ValueError(f'MMS needs ports between 1 and {MAX_PORT - 1}, got {value}')
        self._own_workdir = workdir is None
        self.workdir = workdir
        self.log = log
        self.process: subprocess.Popen | None = None

    def _config(self) -> str:
        path = os.path.join(self.workdir, 'config.properties')
        lines = [
            f'inference_address=http://{self.host}:{self.port}',
            f'management_address=http://{self.host}:{self.management_port}',
            f'model_store={self.model_store}',
            # Pass request bodies to the handler as bytes, whatever their content type.
            'decode_input_request=false',
            'default_workers_per_model=1',
            # No /tmp/hsperfdata_* files; a bounded heap for the front end, which only routes.
            'vmargs=-Xmx512m -XX:-UsePerfData',
        ]
        with open(path, 'w', encoding='utf-8') as handle_:
            handle_.write('\n'.join(lines) + '\n')
        return path

    def start(self, timeout: float = 120) -> ModelServer:
        """Start MMS and wait until it answers ``/ping``."""
        java = os.path.join(os.environ['JAVA_HOME'], 'bin', 'java') \
            if os.environ.get('JAVA_HOME') else shutil.which('java')
        if not java or not os.path.isfile(java):
            raise RuntimeError('MXNet Model Server needs Java: install a JRE (make serve-env)')
        if not os.path.isdir(self.model_store):
            raise FileNotFoundError(f'no model store folder at {self.model_store!r}')
        if self._own_workdir:
            self.workdir = tempfile.mkdtemp(prefix='mms-')
        os.makedirs(self.workdir, exist_ok=True)
        self.log = self.log or os.path.join(self.workdir, 'console.log')
        env = dict(os.environ)
        # MMS puts its pid file in Python's temporary folder and its sockets and unpacked
        # archives in Java's: both go to the working folder so servers never collide.
        env.update(TMPDIR=self.workdir, TEMP=self.workdir)
        cmd = [sys.executable, '-m', 'mms.model_server', '--start', '--foreground',
               '--mms-config', self._config(), '--model-store', self.model_store]
        with open(self.log, 'ab') as out:
            # A session of its own: stop() ends the launcher, Java and the workers as a group.
            self.process = subprocess.Popen(cmd, cwd=self.workdir, env=env, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f'MMS exited with status {self.process.returncode}:\n{tail}')
            try:
                if self.request('GET', '/ping')[0] == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f'MMS did not answer /ping within {timeout:.0f} s')
            time.sleep(0.5)

    def register(self, archive: str, name: str | None = None, batch_size: int = 8,
                 max_batch_delay: int = 50, workers: int = 1, timeout: int = 300) -> str:
        """Load an archive of the model store, waiting for its workers; return its name.

        Args:
            archive: File name of the ``.mar`` inside the model store.
            name: Name in ``/predictions/NAME``; default the archive's.
            batch_size: Most requests MMS hands the handler at once.
            max_batch_delay: Milliseconds MMS waits to fill a batch.
            workers: Python worker processes.
            timeout: Seconds allowed for the workers to load the model.
        """
        name = name or os.path.splitext(os.path.basename(archive))[0]
        query = urllib.parse.urlencode({
            'url': os.path.basename(archive), 'model_name': name, 'batch_size': batch_size,
            'max_batch_delay': max_batch_delay, 'initial_workers': workers,
            'synchronous': 'true', 'response_timeout': timeout})
        status, body = self.request('POST', f'/models?{query}', management=True,
                                    timeout=timeout + 30)
        if status != 200:
            raise RuntimeError(f'MMS refused {archive}: HTTP {status} {body.decode()}\n'
                               f'{self.log_tail()}')
        return name

    def request(self, method: str, path: str, body: bytes | None = None,
                management: bool = False, timeout: float = 60,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """One HTTP request to the server: ``(status, body)``."""
        port = self.management_port if management else self.port
        conn = http.client.HTTPConnection(self.host, port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def log_tail(self, lines: int = 40) -> str:
        """The end of MMS's console output and of its own log."""
        tails = []
        for path in (self.log, os.path.join(self.workdir or '', 'logs', 'mms_log.log')):
            if path and os.path.isfile(path):
                with open(path, encoding='utf-8', errors='replace') as handle_:
                    tails.append(''.join(handle_.readlines()[-lines:]))
        return '\n'.join(tails)

    def pids(self) -> list[int]:
        """Live processes of the server (launcher, Java front end, Python workers)."""
        return _group_members(self.process.pid) if self.process is not None else []

    def stop(self, timeout: float = 30) -> None:
        """Stop every process of the server; remove the working folder when it is ours."""
        if self.process is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.process.pid, sig)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + timeout
                while self.pids() and time.monotonic() < deadline:
                    self.process.poll()  # reaps the launcher as soon as it exits
                    time.sleep(0.2)
                if not self.pids():
                    break
            self.process.wait()
        if self._own_workdir and self.workdir and os.path.isdir(self.workdir):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _group_members(group: int) -> list[int]:
    """Processes of a process group that have not exited (zombies excluded)."""
    import psutil  # local: a dependency of MMS, needed only to run a server

    members = []
    for proc in psutil.process_iter(['status']):
        try:
            if os.getpgid(proc.pid) == group and proc.info['status'] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return members
