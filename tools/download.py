"""Download, verify and cache published ImageNet weights; list what the cache holds.

The tool is :mod:`gluon_resnest.cli.download`, also installed as
the ``gluon-resnest-download`` command.
"""
import sys

from gluon_resnest.cli.download import main

if __name__ == '__main__':
    sys.exit(main())
