"""Pack an export (FP32 or INT8) into an MXNet Model Server archive (``.mar``).

The tool is :mod:`gluon_resnest.cli.archive_mms`, also installed as
the ``gluon-resnest-archive-mms`` command.
"""
import sys

from gluon_resnest.cli.archive_mms import main

if __name__ == '__main__':
    sys.exit(main())
