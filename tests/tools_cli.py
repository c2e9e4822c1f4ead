"""Helpers for the tests of tools/: import a tool's module, run it as a subprocess."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_tool(name: str) -> ModuleType:
    """Import ``tools/<name>.py`` as a module (its ``main(argv)`` can then be called).

    The tools folder goes on ``sys.path`` as it does when a tool runs as a script (the
    benchmark imports its harness from there).
    """
    if str(ROOT / 'tools') not in sys.path:
        sys.path.append(str(ROOT / 'tools'))
    spec = importlib.util.spec_from_file_location(f'tools_{name}', ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python tools/<name>.py ARGS`` from the repository root, capturing its output."""
    return subprocess.run([sys.executable, str(ROOT / 'tools' / f'{name}.py'), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def tame_residual_branches(net, seed: int = 0, low: float = 0.05, high: float = 0.3) -> None:
    """Give the last BatchNorm of every bottleneck (``bn3``) a small gamma.

    With random BatchNorm statistics everywhere, a deep network's residual stream grows
    geometrically (outputs of 1e8 for ResNeSt-269), and float32 comparisons lose their meaning.
    Trained networks keep their residual branches small (the paper zero-initialises this
    gamma), so this keeps random networks in a realistic range.
    """
    import mxnet as mx
    import numpy as np

    rng = np.random.RandomState(seed)
    for name, param in net._collect_params_with_prefix().items():  # noqa: SLF001
        if name.endswith('.bn3.gamma'):
            param.set_data(mx.nd.array(rng.uniform(low, high, param.shape)))
