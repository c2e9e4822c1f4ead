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

.PHONY: install torch-env ov-env serve-env test test-slow lint demo serve bench clean

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

test-slow: install torch-env
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

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
	$(PY) tools/benchmark.py --model resnest50 --batch-size 16 --input-size 224 \
		--compare gluoncv,torch,onnxruntime,openvino

clean:
	rm -rf $(VENV) $(TORCH_VENV) $(OV_VENV) build *.egg-info .pytest_cache runs data
