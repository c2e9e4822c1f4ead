"""Top-5 classes, with probabilities, of each image, from an export or a model + parameters.

The tool is :mod:`gluon_resnest.cli.predict`, also installed as
the ``gluon-resnest-predict`` command.
"""
import sys

from gluon_resnest.cli.predict import main

if __name__ == '__main__':
    sys.exit(main())
