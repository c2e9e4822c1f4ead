# Everything runs in .venv, created here from the package registries (see README).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# MXNet 1.9.1 needs numpy 1.23.5; every pip call is held to these pins.
CONSTRAINTS := constraints.txt
# The GPU build of MXNet where nvidia-smi sees a GPU, the CPU build elsewhere.
MXNET_EXTRA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo cu112 || echo cpu)
HOROVOD_ENV := HOROVOD_WITH_MXNET=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
	HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1
PYTEST_ARGS ?=
# The authors' PyTorch ResNeSt lives in its own virtualenv: GluonCV 0.10.5 refuses to import
# beside torch >= 2. Tools and tests find it through GLUON_RESNEST_TORCH_PYTHON.
TORCH_VENV ?= .torchvenv
TORCH_PY := $(TORCH_VENV)/bin/python
export GLUON_RESNEST_TORCH_PYTHON := $(abspath $(TORCH_PY))

.PHONY: install torch-env test test-slow test-multihost lint demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel "setuptools<70" "cmake<3.28"
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[$(MXNET_EXTRA),test,train]"
	$(HOROVOD_ENV) $(PIP) install -q -c $(CONSTRAINTS) --no-build-isolation horovod==0.28.1
	$(PY) -c "import mxnet, gluoncv, horovod.mxnet; print('mxnet', mxnet.__version__, 'horovod', horovod.__version__)"
	touch $@

torch-env: $(TORCH_VENV)/.installed

$(TORCH_VENV)/.installed:
	test -x $(TORCH_PY) || $(PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_PY) -m pip install -q --upgrade pip
	$(TORCH_PY) -m pip install -q torch==2.13.0 "numpy<2"
	$(TORCH_PY) -m pip install -q --no-deps resnest==0.0.5
	$(TORCH_PY) -c "import torch, resnest.torch; print('torch', torch.__version__)"
	touch $@

test: install torch-env
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The multi-host tests (marked slow, so also part of test-slow) build network namespaces as
# root; beds left by an interrupted run are removed before and after.
test-slow: install torch-env
	$(PY) tests/multihost.py cleanup
	$(PY) -m pytest -m slow $(PYTEST_ARGS); rc=$$?; $(PY) tests/multihost.py cleanup; exit $$rc

test-multihost: install
	$(PY) tests/multihost.py cleanup
	$(PY) -m pytest -m multihost $(PYTEST_ARGS); rc=$$?; $(PY) tests/multihost.py cleanup; exit $$rc

lint: install
	$(PY) -m ruff check gluon_resnest tools recipes tests

demo: install
	$(PY) tools/demo.py

bench: install torch-env
	$(PY) tools/benchmark.py --model resnest50 --batch-size 16 --input-size 224 --compare gluoncv,torch

clean:
	rm -rf $(VENV) $(TORCH_VENV) build *.egg-info .pytest_cache runs data
