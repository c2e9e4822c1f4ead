"""A real HTTP weights store on the loopback interface, for the tests of published weights.

:class:`LoopbackStore` serves zips (``NAME-HASH8.zip`` holding ``NAME-HASH8.params``) at GluonCV's
layout (``/gluon/models/...``) and the authors' (``/authors/...``), counts the requests, and can
misbehave on purpose: close the connection mid-file, answer 404, ignore ``Range``, or hold a
response until the test lets it go. :func:`use_store` points the repository variables at it and
the weights table at the served files.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import os
import threading
import zipfile
from typing import Any

from gluon_resnest import weights


def params_zip(params: bytes, stem: str) -> bytes:
    """A zip holding ``params`` as ``{stem}.params``, as both stores publish them."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w', zipfile.ZIP_STORED) as archive:
        archive.writestr(f'{stem}.params', params)
    return buffer.getvalue()


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class LoopbackStore:
    """An HTTP server on 127.0.0.1 (a free port) serving ``files`` (URL path -> bytes).

    Attributes:
        files: What is served; other paths answer 404.
        requests: ``(path, Range header or None)`` of every request, in order.
        faults: URL path -> list of faults, one used up per request: ``'truncate'`` (send the
            headers of the whole file, half of it, then close), ``'hold'`` (wait for
            :attr:`release` before answering).
        ranges: Whether ``Range: bytes=N-`` is honoured (206) or ignored (200, whole file).
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.faults: dict[str, list[str]] = {}
        self.ranges = True
        self.arrived = threading.Event()
        self.release = threading.Event()
        store = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                store.requests.append((self.path, self.headers.get('Range')))
                store.arrived.set()
                faults = store.faults.get(self.path) or []
                fault = faults.pop(0) if faults else None
                if fault == 'hold':
                    store.release.wait(60)
                data = store.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                wanted = self.headers.get('Range')
                if wanted and store.ranges and wanted.startswith('bytes='):
                    start = int(wanted[len('bytes='):].split('-')[0])
                    self.send_response(206)
                    self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
                else:
                    self.send_response(200)
                self.send_header('Content-Type', 'application/zip')
                self.send_header('Content-Length', str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if fault == 'truncate':
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self.server.server_address[1]}'

    def __enter__(self) -> LoopbackStore:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def publish(self, name: str, params: bytes, source: str = 'gluoncv',
                monkeypatch: Any = None, top1: float = 0.0) -> tuple[str, str]:
        """Serve ``params`` as ``name``'s published file; with ``monkeypatch``, make it the
        table's entry for ``name``. Returns ``(URL path, sha1)``."""
        digest = sha1(params)
        stem = f'{name}-{digest[:8]}'
        folder = '/gluon/models/' if source == 'gluoncv' else '/authors/'
        path = f'{folder}{stem}.zip'
        self.files[path] = params_zip(params, stem)
        if monkeypatch is not None:
            monkeypatch.setitem(weights.WEIGHTS, name,
                                weights.PublishedWeights(name, source, digest, top1))
        return path, digest

    def count(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p == path)


def use_store(monkeypatch: Any, store: LoopbackStore) -> None:
    """Point GluonCV's and the authors' repository variables at ``store``."""
    monkeypatch.setenv('MXNET_GLUON_REPO', store.url + '/')
    monkeypatch.setenv('GLUON_RESNEST_REPO', store.url + '/authors')
    monkeypatch.delenv('ENCODING_REPO', raising=False)


def leftovers(folder: str | os.PathLike) -> list[str]:
    """Files in ``folder`` other than lock files (temporaries, zips, partial files)."""
    if not os.path.isdir(folder):
        return []
    return sorted(n for n in os.listdir(folder) if not n.endswith('.lock'))
