"""Install gluon_resnest; ``make install`` adds the pins and Horovod (see README)."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r"__version__ = '([^']+)'",
                    (HERE / 'gluon_resnest' / '__init__.py').read_text()).group(1)

setup(
    name='gluon_resnest',
    version=VERSION,
    description='ResNeSt: Split-Attention Networks in Apache MXNet Gluon',
    long_description=(HERE / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.8',
    packages=find_packages(include=['gluon_resnest', 'gluon_resnest.*']),
    install_requires=[
        # MXNet 1.9.1 still reads numpy.bool, removed in numpy 1.24.
        'numpy>=1.17,<1.24',
        'opencv-python<4.12',
        'pillow',
        'pyyaml',
        'tqdm',
    ],
    extras_require={
        'cpu': ['mxnet==1.9.1'],
        'cu112': ['mxnet-cu112==1.9.1'],
        'gluoncv': ['gluoncv==0.10.5.post0'],
        'train': ['matplotlib', 'scikit-learn'],
        'onnx': ['onnx', 'onnxruntime'],
        'test': ['pytest', 'ruff', 'gluoncv==0.10.5.post0', 'scikit-learn', 'matplotlib',
                 'onnx', 'onnxruntime'],
    },
    classifiers=[
        'Programming Language :: Python :: 3',
        'License :: OSI Approved :: Apache Software License',
        'Topic :: Scientific/Engineering :: Image Recognition',
    ],
)
