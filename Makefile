# Everything runs in .venv, created here from the package registries (see README).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The version pins (MXNet 1.9.1 needs numpy 1.23.5); every pip call is held to them.
CONSTRAINTS := constraints.txt
PIN = $(shell grep -E '^$(1)==' $(CONSTRAINTS))
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

.PHONY: install torch-env test test-slow lint demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c $(CONSTRAINTS) --upgrade pip wheel setuptools cmake
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[$(MXNET_EXTRA),test,train]"
	$(HOROVOD_ENV) $(PIP) install -q -c $(CONSTRAINTS) --no-build-isolation horovod
	$(PY) -c "import mxnet, gluoncv, horovod.mxnet; print('mxnet', mxnet.__version__, 'horovod', horovod.__version__)"
	touch $@

torch-env: $(TORCH_VENV)/.installed

$(TORCH_VENV)/.installed:
	test -x $(TORCH_PY) || $(PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_PY) -m pip install -q --upgrade pip
	$(TORCH_PY) -m pip install -q $(call PIN,torch) "numpy<2"
	$(TORCH_PY) -m pip install -q --no-deps $(call PIN,resnest)
	$(TORCH_PY) -c "import torch, resnest.torch; print('torch', torch.__version__)"
	touch $@

test: install torch-env
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: install torch-env
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check gluon_resnest tools recipes tests

demo: install
	$(PY) tools/demo.py

bench: install torch-env
	$(PY) tools/benchmark.py --model resnest50 --batch-size 16 --input-size 224 --compare gluoncv,torch

clean:
	rm -rf $(VENV) $(TORCH_VENV) build *.egg-info .pytest_cache runs data
