"""Train a ResNeSt with a paper recipe: ``python recipes/train.py --help``.

The loop is :mod:`gluon_resnest.training.loop` and its command line
:mod:`gluon_resnest.training.cli`, also installed as the ``gluon-resnest-train`` command.
"""
import sys

from gluon_resnest.training.cli import main

if __name__ == '__main__':
    sys.exit(main())
