"""Published ImageNet weights: where each file is, and fetching, verifying and caching it.

Two stores publish Gluon ``save_parameters`` files of these networks, each as
``NAME-HASH8.zip`` holding ``NAME-HASH8.params`` (``HASH8``: the first 8 hex digits of the
``.params`` file's sha1):

* GluonCV's model store (``resnest14`` ... ``resnest269``):
  ``{MXNET_GLUON_REPO}gluon/models/NAME-HASH8.zip``, with GluonCV's default repository when
  ``MXNET_GLUON_REPO`` is not set;
* the authors' GitHub release ``weights_step2`` (the seven ``resnest50_fast_*``):
  ``{GLUON_RESNEST_REPO}NAME-HASH8.zip``; ``GLUON_RESNEST_REPO`` falls back to
  ``ENCODING_REPO`` (the authors' own variable, same layout) and then to the release.

Files are cached as GluonCV caches them, in ``~/.mxnet/models`` (``$MXNET_HOME/models`` when
``MXNET_HOME`` is set, or the ``root`` a caller passes), named ``NAME-HASH8.params``, so GluonCV
and this package share one cache. A download goes to a temporary file in the cache folder, is
unzipped to another, and only a ``.params`` file whose sha1 matches is renamed to its final
name: the cache never holds a partial or unverified file under that name. A ``.lock`` file of
the same stem (GluonCV's lock file) serialises processes fetching the same file.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import glob
import hashlib
import logging
import os
import re
import tempfile
import zipfile
from typing import Any, Iterator

__all__ = ['AUTHORS_REPO', 'DEFAULT_ROOT', 'GLUONCV_REPO', 'NO_WEIGHTS', 'WEIGHTS',
           'PublishedWeights', 'WeightsError', 'cache_listing', 'cache_root', 'fetch',
           'load_pretrained', 'published', 'repo_url', 'resolve_pretrained', 'weights_url']

logger = logging.getLogger(__name__)

#: GluonCV's model store (``gluoncv.model_zoo.model_store.apache_repo_url``).
GLUONCV_REPO = 'https://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/'
#: The authors' release of their Gluon weights (``resnest/gluon/model_store.py``).
AUTHORS_REPO = 'https://github.com/zhanghang1989/ResNeSt/releases/download/weights_step2/'
#: GluonCV's default cache folder; ``MXNET_HOME`` replaces it.
DEFAULT_ROOT = os.path.join('~', '.mxnet', 'models')

_CHUNK = 1 << 20
_TIMEOUT = (15, 60)  # seconds to connect, seconds without a byte


@dataclasses.dataclass(frozen=True)
class PublishedWeights:
    """One published parameter file.

    Attributes:
        name: Model name.
        source: ``'gluoncv'`` (GluonCV's model store) or ``'authors'`` (their release).
        sha1: sha1 of the ``.params`` file inside the zip.
        top1: ImageNet top-1 (%) the publisher reports for this file, at the model's
            ``eval_crop``.
    """

    name: str
    source: str
    sha1: str
    top1: float

    @property
    def file_name(self) -> str:
        """``NAME-HASH8.params``, the name in the zip and in the cache."""
        return f'{self.name}-{self.sha1[:8]}.params'


def _table(source: str, rows: list[tuple[str, str, float]]) -> dict[str, PublishedWeights]:
    return {name: PublishedWeights(name, source, sha1, top1) for name, sha1, top1 in rows}


#: Every published file, by model name. GluonCV's sha1s are those of
#: ``gluoncv.model_zoo.model_store``, the authors' those of ``resnest.gluon.model_store``
#: (which lists the same files for resnest50/101/200/269). Top-1: GluonCV's model zoo for
#: resnest14/26, the authors' Gluon columns for the others.
WEIGHTS: dict[str, PublishedWeights] = {
    **_table('gluoncv', [
        ('resnest14', '7e0b0cae2fd7e9084d1e498b858af1429a6eb1cb', 75.75),
        ('resnest26', '364590740605b6a2b95f5bb77436d781a817436f', 78.68),
        ('resnest50', 'bcfefe1dd1dd1ef5cfed5563123c1490ea37b42e', 81.04),
        ('resnest101', '5da943b3230f071525a98639945a6b3b3a45ac95', 82.81),
        ('resnest200', '0c5d117df664ace220aa6fc2922c094bb079d381', 83.88),
        ('resnest269', '11ae7f5da2bcdbad05ba7e84f9b74383e717f3e3', 84.53),
    ]),
    **_table('authors', [
        ('resnest50_fast_1s1x64d', '5e16dbe56f1fba8e1bc2faddd91f874bfbd74193', 80.35),
        ('resnest50_fast_2s1x64d', '85eb779a5e313d74b5e5390dae02aa8082a0f469', 80.65),
        ('resnest50_fast_4s1x64d', '3f215532c6d8e07a10df116309993d4479fc3e4b', 80.90),
        ('resnest50_fast_1s2x40d', 'af3514c2ec757a3a9666a75b82f142ed47d55bee', 80.72),
        ('resnest50_fast_2s2x40d', '2db13245aa4967cf5e8617cb4911880dd41628a4', 80.84),
        ('resnest50_fast_4s2x40d', 'b24d515797832e02da4da9c8a15effd5e44cfb56', 81.17),
        ('resnest50_fast_1s4x24d', '7318153ddb5e542a20cc6c58192f3c6209cff9ed', 80.97),
    ]),
}

#: Registered models without published weights, and why.
NO_WEIGHTS: dict[str, str] = {
    'resnetd50': 'neither GluonCV nor the authors publish Gluon weights for it',
}


class WeightsError(FileNotFoundError):
    """Published weights that cannot be had: ``what`` went wrong, ``path`` is where the verified
    file belongs (put it there by hand when there is no network)."""

    def __init__(self, what: str, path: str) -> None:
        super().__init__(errno.ENOENT, what, path)

    def __str__(self) -> str:
        return f'{self.strerror} ({self.filename})'

    def __reduce__(self):
        return type(self), (self.strerror, self.filename)


class _InterruptedError(Exception):
    """The connection ended before the whole file came."""


def published(name: str, root: str | os.PathLike | None = None) -> PublishedWeights:
    """The published file of model ``name``.

    Raises:
        WeightsError: The model has no published weights (the path is where a file of one's
            own may go, ``{cache}/{name}.params``).
        ValueError: No such model.
    """
    from .registry import lookup

    lookup(name)
    key = name.lower()
    if key not in WEIGHTS:
        why = NO_WEIGHTS.get(key, 'nobody publishes weights for it')
        raise WeightsError(f'{key} has no published weights ({why}); pass your own .params '
                           f'file, or put it at', os.path.join(cache_root(root), f'{key}.params'))
    return WEIGHTS[key]


def cache_root(root: str | os.PathLike | None = None) -> str:
    """The cache folder: ``root``, except that GluonCV's default (and None) means
    ``$MXNET_HOME/models`` when ``MXNET_HOME`` is set and ``~/.mxnet/models`` otherwise."""
    if root is None or os.path.normpath(os.fspath(root)) == os.path.normpath(DEFAULT_ROOT):
        home = os.environ.get('MXNET_HOME')
        root = os.path.join(home, 'models') if home else DEFAULT_ROOT
    return os.path.abspath(os.path.expanduser(os.fspath(root)))


def repo_url(source: str) -> str:
    """The folder URL of a source (``'gluoncv'`` or ``'authors'``), from the environment."""
    if source == 'gluoncv':
        repo = os.environ.get('MXNET_GLUON_REPO') or GLUONCV_REPO
        return repo.rstrip('/') + '/gluon/models/'
    if source == 'authors':
        repo = (os.environ.get('GLUON_RESNEST_REPO') or os.environ.get('ENCODING_REPO')
                or AUTHORS_REPO)
        return repo.rstrip('/') + '/'
    raise ValueError(f'unknown weights source {source!r}')


def weights_url(name: str, tag: str | None = None) -> str:
    """URL of the zip of ``name``'s published file (or of the file with sha1 prefix ``tag``)."""
    entry = published(name)
    stem = f'{entry.name}-{(tag or entry.sha1)[:8]}'
    return f'{repo_url(entry.source)}{stem}.zip'


def _sha1(path: str) -> str:
    digest = hashlib.sha1()
    with open(path, 'rb') as handle:
        for block in iter(lambda: handle.read(_CHUNK), b''):
            digest.update(block)
    return digest.hexdigest()


def _matches(path: str, sha1: str) -> bool:
    if len(sha1) == 40:
        from mxnet.gluon.utils import check_sha1

        return check_sha1(path, sha1)
    return _sha1(path).startswith(sha1)


def _expected_sha1(entry: PublishedWeights, tag: str | None) -> str:
    """The full sha1 when ``tag`` is a prefix of the published one, else the tag itself."""
    if tag is None or entry.sha1.startswith(tag.lower()):
        return entry.sha1
    return tag.lower()


def _reason(err: BaseException) -> str:
    """A short reason for a failed request (requests wraps the socket error several times)."""
    text = str(err)
    found = re.findall(r'\[Errno -?\d+\] ([^\'")\]]+)', text)
    if found:
        return found[-1].strip()
    if 'timed out' in text.lower():
        return 'timed out'
    return text.splitlines()[0] if text.strip() else type(err).__name__


@contextlib.contextmanager
def _locked(path: str) -> Iterator[bool]:
    """An exclusive lock on ``path`` (created if needed) between processes, where fcntl exists;
    yields whether it is held."""
    try:
        import fcntl
    except ImportError:  # no lock: unique temporary names keep the cache consistent anyway
        yield False
        return
    with open(path, 'a+b') as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            logger.info('waiting for another process to finish %s', path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _mib(size: int) -> int:
    """Mebibytes begun: the progress count of ``size`` bytes."""
    return -(-size // _CHUNK)


def _download(url: str, handle: Any, retries: int, dest: str) -> None:
    """Stream ``url`` into the open binary ``handle`` (for the file ``dest``); an interrupted
    transfer is resumed (HTTP Range) or restarted up to ``retries`` times."""
    import requests

    from .progress import progress

    received, failures, bar = 0, 0, None
    try:
        while True:
            headers = {'Range': f'bytes={received}-'} if received else {}
            total, responded = None, False
            try:
                with requests.get(url, stream=True, timeout=_TIMEOUT, headers=headers) as resp:
                    if resp.status_code not in (200, 206):
                        raise _HTTPError(f'HTTP {resp.status_code} {resp.reason}')
                    responded = True
                    if resp.status_code == 200 and received:  # no Range support: start over
                        handle.seek(0)
                        handle.truncate()
                        bar.update(-_mib(received))
                        received = 0
                    length = resp.headers.get('Content-Length')
                    total = received + int(length) if length and length.isdigit() else None
                    if bar is None:
                        logger.info('downloading %s to %s', url, dest)
                        bar = progress(total=_mib(total) if total else None,
                                       desc=os.path.basename(dest), unit='MiB',
                                       interval=10.0)
                    for block in resp.iter_content(_CHUNK):
                        handle.write(block)
                        before, received = received, received + len(block)
                        bar.update(_mib(received) - _mib(before))
                    if total is not None and received < total:
                        raise _InterruptedError()
                    return
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError, _InterruptedError) as err:
                if not responded:  # no connection (offline, refused, no such host)
                    raise _HTTPError(_reason(err)) from None
                failures += 1
                of = f' of {total}' if total is not None else ''
                detail = f'connection broken after {received}{of} bytes'
                if failures > retries:
                    raise _HTTPError(detail) from None
                logger.warning('%s: %s; resuming', url, detail)
    finally:
        if bar is not None:
            bar.close()


class _HTTPError(Exception):
    """A download that failed, with a short reason."""


def _unpack(zip_path: str, member: str, dest_handle: Any) -> str:
    """Copy ``member`` (or the zip's only ``.params`` file) into ``dest_handle``; its sha1."""
    digest = hashlib.sha1()
    try:
        with zipfile.ZipFile(zip_path) as archive:
            names = archive.namelist()
            if member not in names:
                params = [n for n in names if n.endswith('.params')]
                if len(params) != 1:
                    raise ValueError(f'the zip holds no {member} (it holds {names[:5]})')
                member = params[0]
            with archive.open(member) as src:
                for block in iter(lambda: src.read(_CHUNK), b''):
                    digest.update(block)
                    dest_handle.write(block)
    except zipfile.BadZipFile as err:
        raise ValueError(f'not a zip archive ({err})') from None
    return digest.hexdigest()


def _remove(path: str | None) -> None:
    if path:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def fetch(name: str, tag: str | None = None, root: str | os.PathLike | None = None,
          verify_cached: bool = True, force: bool = False, retries: int = 2) -> str:
    """The path of ``name``'s published ``.params`` file in the cache, downloading it if needed.

    Args:
        name: Model name.
        tag: A sha1 prefix (GluonCV's ``pretrained='bcfefe1d'``); default the published file.
        root: Cache folder (see :func:`cache_root`).
        verify_cached: Check the sha1 of a file already in the cache (and download it again
            when it differs); False trusts a cached file.
        force: Download even when the file is cached.
        retries: How often an interrupted transfer is resumed before giving up.

    Returns:
        ``{cache}/NAME-HASH8.params``, whose sha1 matched when it was written here.

    Raises:
        WeightsError: The download failed (the message names the URL and the path where the
            file belongs) or its content did not match the sha1.
    """
    entry = published(name, root)
    sha1 = _expected_sha1(entry, tag)
    folder = cache_root(root)
    stem = f'{entry.name}-{sha1[:8]}'
    path = os.path.join(folder, f'{stem}.params')
    url = weights_url(entry.name, sha1)

    def cached() -> bool:
        if force or not os.path.isfile(path):
            return False
        if not verify_cached or _matches(path, sha1):
            return True
        logger.warning('%s: cached file %s does not match sha1 %s; downloading it again',
                       entry.name, path, sha1)
        return False

    if cached():
        return path
    os.makedirs(folder, exist_ok=True)
    with _locked(os.path.join(folder, f'{stem}.lock')) as exclusive:
        if not force and cached():  # another process has just written it
            return path
        if exclusive:  # temporaries left by a process killed while it held the lock
            for leftover in glob.glob(os.path.join(glob.escape(folder), f'.{stem}.*.part')):
                _remove(leftover)
        _fetch_into(url, path, sha1, retries)
    return path


def _fetch_into(url: str, path: str, sha1: str, retries: int) -> None:
    """Download ``url`` (a zip), verify the ``.params`` inside it, rename it to ``path``."""
    folder, final = os.path.split(path)
    stem = final[:-len('.params')]
    zip_tmp = params_tmp = None
    hint = f'put the unzipped file (sha1 {sha1}) at'
    try:
        fd, zip_tmp = tempfile.mkstemp(prefix=f'.{stem}.', suffix='.zip.part', dir=folder)
        with os.fdopen(fd, 'wb') as handle:
            try:
                _download(url, handle, retries, path)
            except _HTTPError as err:
                raise WeightsError(f'cannot fetch {url}: {err}; {hint}', path) from None
        fd, params_tmp = tempfile.mkstemp(prefix=f'.{stem}.', suffix='.params.part', dir=folder)
        with os.fdopen(fd, 'wb') as handle:
            try:
                got = _unpack(zip_tmp, final, handle)
            except ValueError as err:
                raise WeightsError(f'{url} is not a weights archive: {err}; {hint}',
                                   path) from None
            handle.flush()
            os.fsync(handle.fileno())
        if not got.startswith(sha1):
            raise WeightsError(f'the file in {url} has sha1 {got}, not {sha1} (a wrong or '
                               f'outdated mirror?); {hint}', path)
        os.replace(params_tmp, path)
        params_tmp = None
        logger.info('verified %s (sha1 %s)', path, got)
    finally:
        _remove(zip_tmp)
        _remove(params_tmp)


def resolve_pretrained(name: str, pretrained: bool | str | os.PathLike,
                       root: str | os.PathLike | None = None) -> tuple[str, str | None]:
    """``(path, sha1)`` for ``get_model``'s ``pretrained``, fetching a published file if needed;
    ``sha1`` is None for a user's file and the expected sha1 (or prefix) for a published one."""
    name = name.lower()
    if isinstance(pretrained, (str, os.PathLike)) and not isinstance(pretrained, bool):
        text = os.fspath(pretrained)
        if os.path.isfile(text) or not re.fullmatch(r'[0-9a-fA-F]{8,40}', text):
            if not os.path.isfile(text):
                raise FileNotFoundError(f'no parameter file at {text!r}')
            return text, None
        entry = published(name, root)
        return fetch(name, text, root, verify_cached=False), _expected_sha1(entry, text)
    own = os.path.join(cache_root(root), f'{name}.params')
    if os.path.isfile(own):  # a file the user put there takes precedence
        return own, None
    entry = published(name, root)
    return fetch(name, None, root, verify_cached=False), entry.sha1


def load_pretrained(net: Any, name: str, pretrained: bool | str | os.PathLike,
                    root: str | os.PathLike | None = None, ctx: Any = None,
                    resolved: tuple[str, str | None] | None = None) -> str:
    """Load ``pretrained`` into ``net`` as ``get_model`` does; returns the file's path.

    ``pretrained`` is True (the published file, fetched into the cache; a ``{cache}/NAME.params``
    put there by hand comes first), a sha1 prefix of a published file (GluonCV's tag), or a
    path. A cached published file that fails to load is checked against its sha1 and, when it
    differs, downloaded again once. ``resolved`` is :func:`resolve_pretrained`'s result when
    the caller has it already.
    """
    import mxnet as mx

    path, sha1 = resolved or resolve_pretrained(name, pretrained, root)
    logger.info('loading %s parameters from %s', name, path)
    try:
        net.load_parameters(path, ctx=ctx)
        return path
    except (ValueError, mx.base.MXNetError):
        if sha1 is None or _matches(path, sha1):
            raise  # the user's file, or a verified file of another architecture
    logger.warning('%s: cached %s fails to load and does not match sha1 %s; downloading it '
                   'again', name, path, sha1)
    path = fetch(name, sha1, root, force=True)
    net.load_parameters(path, ctx=ctx)
    return path


def cache_listing(root: str | os.PathLike | None = None,
                  verify: bool = True) -> list[dict[str, Any]]:
    """One record per registered model: its published file, source, URL and cache state.

    ``state`` is ``'verified'`` (cached, sha1 matches), ``'sha1 differs'``, ``'cached'``
    (present, not verified: ``verify=False``), ``'absent'``, or ``'no published weights'``.
    """
    from .registry import list_models

    folder = cache_root(root)
    rows = []
    for name in list_models():
        entry = WEIGHTS.get(name)
        if entry is None:
            own = os.path.join(folder, f'{name}.params')
            rows.append({'name': name, 'source': None, 'file': None, 'url': None,
                         'path': own if os.path.isfile(own) else None,
                         'state': 'no published weights'})
            continue
        path = os.path.join(folder, entry.file_name)
        if not os.path.isfile(path):
            state = 'absent'
        elif not verify:
            state = 'cached'
        else:
            state = 'verified' if _matches(path, entry.sha1) else 'sha1 differs'
        rows.append({'name': name, 'source': entry.source, 'file': entry.file_name,
                     'url': weights_url(name), 'path': path, 'state': state,
                     'sha1': entry.sha1, 'top1': entry.top1})
    return rows

