"""Harness of ``tools/benchmark.py``: ours vs GluonCV, the authors' PyTorch (paper Table 2),
and the CPU runtimes that run our ONNX export (onnxruntime, OpenVINO).

Each framework runs in its own worker process (``tools/bench_worker.py``), started once
and driven round-robin over stdin/stdout JSON lines, so the frameworks alternate on the same
cores without re-initialising. The reported figure is the median over all timed batches.
PyTorch and OpenVINO run in their own virtualenvs (their packages clash with MXNet's numpy
pin); onnxruntime runs in ours. The ONNX peers time a file exported by
:func:`gluon_resnest.deploy.export_onnx` from the same network, once per run; OpenVINO gives
three rows: FP32 (precision hint f32), its default precision, and INT8 from NNCF.

``dtype='all'`` times each precision in turn (float32, bfloat16, INT8), one ONNX export for
all, and reports one table per precision: our row of that precision against each peer's row
of it (:data:`MODE_PEERS`).
"""
from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Sequence

__all__ = ['BenchConfig', 'MODES', 'MODE_PEERS', 'ONNX_PEERS', 'Worker', 'format_table',
           'openvino_python', 'run_benchmark', 'torch_python']

logger = logging.getLogger(__name__)

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'bench_worker.py')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Peers that run our ONNX export, with the precision of each of their rows.
ONNX_PEERS = {'onnxruntime': ('float32',), 'openvino': ('float32', 'default', 'int8')}
#: The precisions of a ``dtype='all'`` run, in the order they are timed and reported.
MODES = ('float32', 'bfloat16', 'int8')
#: Each precision's peer rows in a ``dtype='all'`` run: framework -> its workers' dtypes.
#: OpenVINO's ``default`` precision is bf16 on CPUs with AVX-512 BF16 or AMX (its row's setting
#: says what it ran); GluonCV and onnxruntime have no bf16 or INT8 CPU path to compare.
MODE_PEERS = {
    'float32': {'gluoncv': ('float32',), 'torch': ('float32',), 'onnxruntime': ('float32',),
                'openvino': ('float32',)},
    'bfloat16': {'torch': ('bfloat16',), 'openvino': ('default',)},
    'int8': {'openvino': ('int8',)},
}


def torch_python() -> str:
    """Interpreter of the PyTorch virtualenv (``GLUON_RESNEST_TORCH_PYTHON`` or .torchvenv)."""
    return os.environ.get('GLUON_RESNEST_TORCH_PYTHON') or os.path.join(
        REPO, '.torchvenv', 'bin', 'python')


def openvino_python() -> str:
    """Interpreter of the OpenVINO virtualenv (``GLUON_RESNEST_OPENVINO_PYTHON`` or .ovvenv)."""
    return os.environ.get('GLUON_RESNEST_OPENVINO_PYTHON') or os.path.join(
        REPO, '.ovvenv', 'bin', 'python')


@dataclass
class BenchConfig:
    """What to time."""

    model: str = 'resnest50'
    batch_size: int = 16
    input_size: int = 224
    mode: str = 'infer'
    #: Our precision: float32, bfloat16, int8, or all (one table per precision, see above).
    dtype: str = 'float32'
    compare: Sequence[str] = ()
    repetitions: int = 5
    iters: int = 2
    latency_iters: int = 5
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    classes: int = 1000
    #: With ``dtype='int8'``: one INT8 row per entry, each the keyword arguments of
    #: :func:`gluon_resnest.deploy.quantize_network` (e.g. ``{'split_grouped': False}``);
    #: empty means one row with the defaults.
    int8_variants: Sequence[dict[str, Any]] = ()
    #: ``classify``, or GluonCV's Faster R-CNN FPN on the backbone: ``detect`` (the whole
    #: detector) or ``detect-features`` (backbone and FPN only); see ``bench_worker.py``.
    task: str = 'classify'
    #: With a detection task: ``register_gluoncv(dropblock=...)`` of our row.
    dropblock: str = 'gluoncv'


class Worker:
    """One framework's worker process."""

    def __init__(self, framework: str, config: BenchConfig, dtype: str | None = None,
                 quantize_options: dict[str, Any] | None = None,
                 onnx: tuple[str, int] | None = None) -> None:
        self.framework = framework
        self.dtype = dtype or config.dtype
        self.quantize_options = quantize_options
        python = {'torch': torch_python, 'openvino': openvino_python}.get(
            framework, lambda: sys.executable)()
        if not os.path.isfile(python):
            variable, target = {'torch': ('TORCH', 'torch-env'),
                                'openvino': ('OPENVINO', 'ov-env')}[framework]
            raise FileNotFoundError(f'no {framework} interpreter at {python!r}: set '
                                    f'GLUON_RESNEST_{variable}_PYTHON or run `make {target}`')
        env = dict(os.environ, OMP_NUM_THREADS=str(config.threads),
                   MKL_NUM_THREADS=str(config.threads))
        env.pop('MXNET_SUBGRAPH_BACKEND', None)
        cmd = [python, WORKER, '--framework', framework, '--model', config.model,
               '--batch-size', str(config.batch_size), '--input-size', str(config.input_size),
               '--classes', str(config.classes), '--mode', config.mode, '--dtype', self.dtype,
               '--threads', str(config.threads), '--task', config.task,
               '--dropblock', config.dropblock]
        if quantize_options:
            cmd += ['--quantize-options', json.dumps(quantize_options)]
        if onnx is not None:
            cmd += ['--onnx', onnx[0], '--param-count', str(onnx[1])]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, cwd=REPO)
        self.times: list[float] = []
        self.latency: list[float] = []
        self.peak_rss_mib = 0.0
        self.params = 0
        self.setting: str | None = None

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise RuntimeError(f'{self.framework} worker exited (code {code}) without an '
                               f'answer; see its messages above')
        reply = json.loads(line)
        if 'error' in reply:
            raise RuntimeError(f'{self.framework} worker failed: {reply["error"]}')
        return reply

    def wait_ready(self) -> None:
        """Block until the worker has built and warmed up its model."""
        ready = self._read()
        self.params = int(ready['params'])
        self.setting = ready.get('setting')

    def request(self, cmd: str, iters: int) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps({'cmd': cmd, 'iters': iters}) + '\n')
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({'cmd': 'quit'}) + '\n')
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_benchmark(config: BenchConfig, progress: bool = True) -> dict[str, Any]:
    """Time ``ours`` and the frameworks of ``config.compare``, alternating; return a report.

    With ``config.dtype == 'all'`` the report holds one report per precision under ``modes``.
    """
    if config.dtype == 'all':
        return _run_all(config, progress)
    rows: list[tuple[str, str, dict[str, Any] | None]] = []
    if config.dtype == 'int8':
        rows += [('ours', 'int8', dict(v)) for v in (config.int8_variants or [{}])]
    else:
        rows.append(('ours', config.dtype, None))
    if config.dtype != 'float32' and config.mode == 'infer':
        rows.append(('ours', 'float32', None))
    for name in config.compare:
        rows += [(name, dtype, None) for dtype in ONNX_PEERS.get(name, ('float32',))]
    onnx_rows = [name for name, _, _ in rows if name in ONNX_PEERS]
    if onnx_rows and config.mode != 'infer':
        raise ValueError(f'{", ".join(sorted(set(onnx_rows)))} time inference only')
    tmp = tempfile.TemporaryDirectory(prefix='bench-onnx-')
    try:
        onnx = _export_onnx(config, tmp.name) if onnx_rows else None
        results = _time_rows(config, rows, onnx, progress)
    finally:
        tmp.cleanup()
    return _report(config, config.dtype, results)


def _run_all(config: BenchConfig, progress: bool) -> dict[str, Any]:
    """One table per precision (:data:`MODES`), each timed alternately on its own."""
    if config.mode != 'infer':
        raise ValueError('dtype all times inference only')
    tmp = tempfile.TemporaryDirectory(prefix='bench-onnx-')
    modes = {}
    try:
        onnx_rows = [name for name in config.compare if name in ONNX_PEERS]
        onnx = _export_onnx(config, tmp.name) if onnx_rows else None
        for mode in MODES:
            if mode == 'int8':
                rows = [('ours', 'int8', dict(v)) for v in (config.int8_variants or [{}])]
            else:
                rows = [('ours', mode, None)]
            for name in config.compare:
                rows += [(name, dtype, None) for dtype in MODE_PEERS[mode].get(name, ())]
            if progress:
                logger.info('benchmark: %s rows', mode)
            results = _time_rows(config, rows, onnx, progress, desc=f'{mode} rounds')
            modes[mode] = _report(config, mode, results)
    finally:
        tmp.cleanup()
    return {'model': config.model, 'task': config.task, 'batch_size': config.batch_size,
            'input_size': config.input_size, 'mode': config.mode, 'dtype': 'all',
            'threads': config.threads, 'repetitions': config.repetitions,
            'iters': config.iters, 'modes': modes}


def _time_rows(config: BenchConfig, rows: Sequence[tuple[str, str, dict[str, Any] | None]],
               onnx: tuple[str, int] | None, progress: bool,
               desc: str = 'rounds') -> list[dict[str, Any]]:
    """Start one worker per row, time them in alternating rounds, and return their results."""
    workers: list[Worker] = []
    try:
        # Start one at a time: building a model is CPU-heavy and would skew the others.
        for name, dtype, options in rows:
            worker = Worker(name, config, dtype, options,
                            onnx if name in ONNX_PEERS else None)
            workers.append(worker)
            worker.wait_ready()
        from tqdm import tqdm

        for rnd in tqdm(range(config.repetitions), desc=desc, disable=not progress):
            # Rotate who goes first: the first batch after another worker's turn runs slower
            # (caches, thread wake-up), and a fixed order would always charge it to the same row.
            shift = rnd % len(workers)
            for worker in workers[shift:] + workers[:shift]:
                reply = worker.request('run', config.iters)
                worker.times += reply['times']
                worker.peak_rss_mib = max(worker.peak_rss_mib, reply['peak_rss_mib'])
        if config.mode == 'infer' and config.latency_iters > 0:
            # Batch-1 timing in as many alternating rounds as the throughput (at least two),
            # rotated the same way: a batch of one is short, and a busy second skews a few.
            for rnd in range(max(2, config.repetitions)):
                shift = rnd % len(workers)
                for worker in workers[shift:] + workers[:shift]:
                    worker.latency += worker.request('latency', config.latency_iters)['times']
    finally:
        for worker in workers:
            worker.close()
    results = []
    for worker in workers:
        median = statistics.median(worker.times)
        results.append({
            'framework': worker.framework,
            'dtype': worker.dtype,
            'params': worker.params,
            'images_per_sec': config.batch_size / median,
            'batch_seconds': worker.times,
            'latency_ms': 1000 * statistics.median(worker.latency) if worker.latency else None,
            'peak_rss_mib': worker.peak_rss_mib,
            'setting': worker.setting,
        })
        if worker.quantize_options is not None:
            results[-1]['quantize_options'] = worker.quantize_options
    return results


def _report(config: BenchConfig, dtype: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    """The report of one table: its rows and each against the first (ours)."""
    ours = results[0]
    ratios = {_label(r): ours['images_per_sec'] / r['images_per_sec'] for r in results[1:]}
    report = {'model': config.model, 'task': config.task, 'batch_size': config.batch_size,
              'input_size': config.input_size, 'mode': config.mode, 'dtype': dtype,
              'threads': config.threads, 'repetitions': config.repetitions,
              'iters': config.iters, 'results': results, 'ratios': ratios}
    if ours['latency_ms']:
        # Above 1: ours answers one image sooner than that row.
        report['latency_ratios'] = {_label(r): r['latency_ms'] / ours['latency_ms']
                                    for r in results[1:] if r['latency_ms']}
    fp32 = [r for r in results if r['framework'] == 'ours' and r['dtype'] == 'float32']
    if dtype == 'int8' and fp32:
        # Each INT8 row against our FP32 row of the same run (the speed-up asked for).
        report['int8_speedup'] = {_label(r): r['images_per_sec'] / fp32[0]['images_per_sec']
                                  for r in results if r['dtype'] == 'int8'}
    return report


def _export_onnx(config: BenchConfig, folder: str) -> tuple[str, int]:
    """ONNX file of our network for the ONNX peers, and its trainable parameter count.

    Made by a worker process, so that this driver stays small: the workers it starts inherit
    its peak RSS, which they report.
    """
    output = os.path.join(folder, f'{config.model}.onnx')
    cmd = [sys.executable, WORKER, '--framework', 'ours', '--model', config.model,
           '--input-size', str(config.input_size), '--classes', str(config.classes),
           '--export-onnx', output]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO, check=False)
    reply = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
    if proc.returncode != 0 or 'error' in reply or not os.path.isfile(output):
        failure = reply.get('error', f'exit code {proc.returncode}')
        raise RuntimeError(f'ONNX export for the peers failed: {failure}')
    return output, int(reply['params'])


MODE_TITLES = {'float32': 'FP32', 'bfloat16': 'bfloat16', 'int8': 'INT8'}


def _label(row: dict[str, Any]) -> str:
    if row['framework'] != 'ours':
        if row['dtype'] == 'float32':
            return row['framework']
        return f"{row['framework']}-{row['dtype']}"
    label = f"ours-{row['dtype']}"
    if row.get('quantize_options'):
        label += ' ' + json.dumps(row['quantize_options'], sort_keys=True)
    return label


def format_table(report: dict[str, Any]) -> str:
    """Markdown table of a :func:`run_benchmark` report (one per precision for dtype all,
    each under a heading line)."""
    if 'modes' in report:
        return '\n\n'.join(f'### {MODE_TITLES[mode]}\n\n{format_table(sub)}'
                             for mode, sub in report['modes'].items())
    head = ('| implementation | dtype | params | input | mode | batch | images/s (median) | '
            'latency b=1 (ms) | peak RSS (MiB) | ours / this | setting |')
    lines = [head, '|' + '---|' * 11]
    ours = report['results'][0]['images_per_sec']
    names = {'ours': 'gluon_resnest', 'gluoncv': 'GluonCV', 'torch': 'PyTorch (resnest.torch)',
             'onnxruntime': 'onnxruntime (our ONNX)', 'openvino': 'OpenVINO (our ONNX)'}
    mode = report['mode'] if report.get('task', 'classify') == 'classify' else (
        f"{report['task']} {report['mode']}")
    for row in report['results']:
        latency = f"{row['latency_ms']:.1f}" if row['latency_ms'] is not None else '-'
        dtype = row['dtype']
        if row.get('quantize_options'):
            dtype += ' ' + json.dumps(row['quantize_options'], sort_keys=True)
        lines.append(
            f"| {names[row['framework']]} | {dtype} | {row['params'] / 1e6:.1f}M | "
            f"{report['input_size']} | {mode} | {report['batch_size']} | "
            f"{row['images_per_sec']:.2f} | {latency} | {row['peak_rss_mib']:.0f} | "
            f"{ours / row['images_per_sec']:.2f}x | {row.get('setting') or '-'} |")
    return '\n'.join(lines)
