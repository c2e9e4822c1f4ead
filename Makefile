# Everything runs in .venv, created here from the package registries (see README).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The version pins (MXNet 1.9.1 needs numpy 1.23.5); every pip call is held to them.
CONSTRAINTS := constraints.txt
PIN = $(shell grep -E '^$(1)==' $(CONSTRAINTS))
# Where nvidia-smi sees a GPU: the GPU build of MXNet, and Horovod with NCCL for the GPU
# operations (without it every gradient allreduce of a GPU run goes through host memory).
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
MXNET_EXTRA := $(if $(HAS_GPU),cu112,cpu)
HOROVOD_ENV := HOROVOD_WITH_MXNET=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
	HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1
INSTALL_CHECK := import mxnet, gluoncv, horovod, horovod.mxnet as hvd; \
	print('mxnet', mxnet.__version__, 'horovod', horovod.__version__)
# Where the CUDA toolkit and NCCL are looked for last (after HOROVOD_*_HOME, PATH, *_HOME).
CUDA_DEFAULT ?= /usr/local/cuda
NCCL_DEFAULT ?= /usr
ifdef HAS_GPU
NVCC := $(firstword $(wildcard $(HOROVOD_CUDA_HOME)/bin/nvcc $(shell command -v nvcc) \
	$(CUDA_HOME)/bin/nvcc $(CUDA_DEFAULT)/bin/nvcc))
HOROVOD_CUDA_HOME ?= $(abspath $(dir $(NVCC))..)
NCCL_HEADER := $(firstword $(wildcard $(HOROVOD_NCCL_HOME)/include/nccl.h \
	$(NCCL_HOME)/include/nccl.h $(HOROVOD_CUDA_HOME)/include/nccl.h $(NCCL_DEFAULT)/include/nccl.h))
HOROVOD_NCCL_HOME ?= $(abspath $(dir $(NCCL_HEADER))..)
HOROVOD_ENV += HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_CUDA_HOME=$(HOROVOD_CUDA_HOME) \
	HOROVOD_NCCL_HOME=$(HOROVOD_NCCL_HOME)
INSTALL_CHECK += ; print('nccl', hvd.nccl_built()); assert hvd.nccl_built(), 'Horovod has no NCCL'
endif
PYTEST_ARGS ?=
# The authors' PyTorch ResNeSt lives in its own virtualenv: GluonCV 0.10.5 refuses to import
# beside torch >= 2. Tools and tests find it through GLUON_RESNEST_TORCH_PYTHON.
TORCH_VENV ?= .torchvenv
TORCH_PY := $(TORCH_VENV)/bin/python
export GLUON_RESNEST_TORCH_PYTHON := $(abspath $(TORCH_PY))
# OpenVINO and NNCF (its INT8 post-training quantization) need numpy >= 2: their own virtualenv,
# found by tools/benchmark.py through GLUON_RESNEST_OPENVINO_PYTHON.
OV_VENV ?= .ovvenv
OV_PY := $(OV_VENV)/bin/python
export GLUON_RESNEST_OPENVINO_PYTHON := $(abspath $(OV_PY))
# Serving: MXNet Model Server and its archiver go into .venv (they leave the pins alone); the
# server's front end needs a Java runtime, taken from Debian's packages when none is found.
JAVA_PACKAGE := openjdk-17-jre-headless
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SERVE_PREFIX ?= runs/demo/export/model
SERVE_ARCHIVE ?= runs/serve/digits.mar
SERVE_PORT ?= 8080

.PHONY: install gpu-check torch-env ov-env serve-env test test-slow test-multihost lint demo serve bench \
	clean

# .venv also gets the authors' `resnest` package without its dependencies: its `resnest.gluon`
# (models, DropBlock scheduler, AutoAugment policies) is a reference for the tests.
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) | gpu-check
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c $(CONSTRAINTS) --upgrade pip wheel setuptools cmake
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[$(MXNET_EXTRA),test,train]"
	$(HOROVOD_ENV) $(PIP) install -q -c $(CONSTRAINTS) --no-build-isolation horovod
	$(PIP) install -q --no-deps $(call PIN,resnest)
	$(PY) -c "$(INSTALL_CHECK)"
	$(PY) -m gluon_resnest.native || echo "warning: gluon_resnest's native operators did" \
		"not build (networks use MXNet's operators instead)" >&2
	touch $@

# On a GPU host: stop before installing anything when the CUDA toolkit or NCCL is missing.
gpu-check:
ifdef HAS_GPU
	@test -n "$(NVCC)" || { echo "error: a GPU is visible but nvcc is not (looked in" \
		"HOROVOD_CUDA_HOME, PATH, CUDA_HOME, $(CUDA_DEFAULT)): install the CUDA toolkit or" \
		"set HOROVOD_CUDA_HOME" >&2; exit 1; }
	@test -n "$(NCCL_HEADER)" || { echo "error: a GPU is visible but nccl.h is not (looked" \
		"in HOROVOD_NCCL_HOME, NCCL_HOME, $(HOROVOD_CUDA_HOME), $(NCCL_DEFAULT)):" \
		"install NCCL's development files or set HOROVOD_NCCL_HOME" >&2; exit 1; }
	@echo "GPU build: CUDA toolkit $(HOROVOD_CUDA_HOME), NCCL $(HOROVOD_NCCL_HOME)"
endif

torch-env: $(TORCH_VENV)/.installed

$(TORCH_VENV)/.installed:
	test -x $(TORCH_PY) || $(PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_PY) -m pip install -q --upgrade pip
	$(TORCH_PY) -m pip install -q $(call PIN,torch) "numpy<2"
	$(TORCH_PY) -m pip install -q --no-deps $(call PIN,resnest)
	$(TORCH_PY) -c "import torch, resnest.torch; print('torch', torch.__version__)"
	touch $@

ov-env: $(OV_VENV)/.installed

$(OV_VENV)/.installed:
	test -x $(OV_PY) || $(PYTHON) -m venv $(OV_VENV)
	$(OV_PY) -m pip install -q --upgrade pip
	$(OV_PY) -m pip install -q $(call PIN,openvino) $(call PIN,nncf)
	$(OV_PY) -c "import openvino, nncf; print('openvino', openvino.__version__, 'nncf', nncf.__version__)"
	touch $@

serve-env: $(VENV)/.serve-installed

$(VENV)/.serve-installed: $(VENV)/.installed
	command -v java >/dev/null || test -x "$$JAVA_HOME/bin/java" || { \
		$(SUDO) apt-get update && \
		$(SUDO) apt-get install -y --no-install-recommends $(JAVA_PACKAGE); }
	$(PIP) install -q -c $(CONSTRAINTS) multi-model-server model-archiver
	$(PY) -c "import mms.version, model_archiver; print('multi-model-server', mms.version.__version__)"
	touch $@

test: install torch-env
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The multi-host tests (marked slow, so also part of test-slow) build network namespaces as
# root; beds left by an interrupted run are removed before and after.
test-slow: install torch-env serve-env ov-env
	$(PY) tests/multihost.py cleanup
	$(PY) -m pytest -m slow $(PYTEST_ARGS); rc=$$?; $(PY) tests/multihost.py cleanup; exit $$rc

test-multihost: install
	$(PY) tests/multihost.py cleanup
	$(PY) -m pytest -m multihost $(PYTEST_ARGS); rc=$$?; $(PY) tests/multihost.py cleanup; exit $$rc

lint: install
	$(PY) -m ruff check gluon_resnest tools recipes tests

demo: install
	$(PY) tools/demo.py

serve: serve-env
	@test -f $(SERVE_PREFIX)-symbol.json || { \
		echo "no export at $(SERVE_PREFIX): run make demo first (or set SERVE_PREFIX)"; exit 2; }
	$(PY) tools/archive_mms.py --prefix $(SERVE_PREFIX) --output $(SERVE_ARCHIVE) --force
	$(PY) tools/serve_mms.py $(SERVE_ARCHIVE) --port $(SERVE_PORT)

bench: install torch-env ov-env
	$(PY) tools/benchmark.py --model resnest50 --batch-size 16 --input-size 224 --dtype all \
		--compare gluoncv,torch,onnxruntime,openvino

clean:
	rm -rf $(VENV) $(TORCH_VENV) $(OV_VENV) build *.egg-info .pytest_cache runs data
