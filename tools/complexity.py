"""Parameters and GFLOPs (multiply-accumulates of convolutions and FC) per model.

The tool is :mod:`gluon_resnest.cli.complexity`, also installed as
the ``gluon-resnest-complexity`` command.
"""
import sys

from gluon_resnest.cli.complexity import main

if __name__ == '__main__':
    sys.exit(main())
