"""Pack an ImageNet-style image folder (or an im2rec .lst) into RecordIO of RGB JPEGs.

The tool is :mod:`gluon_resnest.cli.pack_rec`, also installed as
the ``gluon-resnest-pack-rec`` command.
"""
import sys

from gluon_resnest.cli.pack_rec import main

if __name__ == '__main__':
    sys.exit(main())
