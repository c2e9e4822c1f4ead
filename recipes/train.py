"""Train a ResNeSt with a paper recipe: ``python recipes/train.py --help``.

The loop itself is :mod:`gluon_resnest.training.loop`; this file only runs its command line
(:func:`gluon_resnest.training.cli.main`), as does the ``gluon-resnest-train`` command.
"""
import sys
from pathlib import Path

try:
    import gluon_resnest  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gluon_resnest.training.cli import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
