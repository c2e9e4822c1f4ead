"""Convert a PyTorch ResNeSt checkpoint (the authors' ``resnest.torch`` or timm's) to .params.

The tool is :mod:`gluon_resnest.cli.convert_torch`, also installed as
the ``gluon-resnest-convert-torch`` command.
"""
import sys

from gluon_resnest.cli.convert_torch import main

if __name__ == '__main__':
    sys.exit(main())
