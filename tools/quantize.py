"""Quantize an exported ResNeSt to INT8 for CPU inference (oneDNN), calibrated on a .rec file.

The tool is :mod:`gluon_resnest.cli.quantize`, also installed as
the ``gluon-resnest-quantize`` command.
"""
import sys

from gluon_resnest.cli.quantize import main

if __name__ == '__main__':
    sys.exit(main())
