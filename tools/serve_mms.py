"""Serve an archive of tools/archive_mms.py over HTTP with MXNet Model Server, until Ctrl-C.

The tool is :mod:`gluon_resnest.cli.serve_mms`, also installed as
the ``gluon-resnest-serve-mms`` command.
"""
import sys

from gluon_resnest.cli.serve_mms import main

if __name__ == '__main__':
    sys.exit(main())
