"""Top-1/top-5 accuracy and images/second of a model on a validation RecordIO file.

The tool is :mod:`gluon_resnest.cli.evaluate`, also installed as
the ``gluon-resnest-evaluate`` command.
"""
import sys

from gluon_resnest.cli.evaluate import main

if __name__ == '__main__':
    sys.exit(main())
