"""Convert an export (``PREFIX-symbol.json`` + ``PREFIX-%04d.params``) to ONNX.

The tool is :mod:`gluon_resnest.cli.export_onnx`, also installed as
the ``gluon-resnest-export-onnx`` command.
"""
import sys

from gluon_resnest.cli.export_onnx import main

if __name__ == '__main__':
    sys.exit(main())
