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

.PHONY: install test test-slow lint demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel "setuptools<70" "cmake<3.28"
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[$(MXNET_EXTRA),test,train]"
	$(HOROVOD_ENV) $(PIP) install -q -c $(CONSTRAINTS) --no-build-isolation horovod==0.28.1
	$(PY) -c "import mxnet, gluoncv, horovod.mxnet; print('mxnet', mxnet.__version__, 'horovod', horovod.__version__)"
	touch $@

test: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check gluon_resnest tools recipes tests

demo: install
	$(PY) tools/demo.py

bench: install
	$(PY) tools/benchmark.py --model resnest50 --batch-size 16 --input-size 224 --compare gluoncv,torch

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache runs
