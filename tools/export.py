"""Export a ResNeSt to MXNet's deployable symbol/params format (plus a meta file).

The tool is :mod:`gluon_resnest.cli.export`, also installed as
the ``gluon-resnest-export`` command.
"""
import sys

from gluon_resnest.cli.export import main

if __name__ == '__main__':
    sys.exit(main())
