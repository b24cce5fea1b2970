# Both targets set up everything they need on a fresh machine with nothing but Python 3:
# the virtualenv, the packages, and the Fashion-MNIST files.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= runs/lenet

.PHONY: test test-gpu demo data lint clean

# Two stamps: the demo needs the package and matplotlib only; the tests add the dev extra
# (PyTorch as the oracle, pytest, hypothesis, ruff), hundreds of MB the demo never imports,
# and the dask extra (Dask and dask.distributed, for the Dask tests' cluster).
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test

$(DEMO_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[plot]'
	touch $@

$(TEST_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev,plot,dask]'
	touch $@ $(DEMO_STAMP)

# Fashion-MNIST: found already (see fastconv.data), or installed from Debian's package where
# apt-get may be run; otherwise the error says how to get the files.
data: $(DEMO_STAMP)
	@$(BIN)/python -c "import fastconv.data as d; d.find_files()" 2>/dev/null || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	  fi; \
	  $(BIN)/python -c "import fastconv.data as d; d.find_files()"; }

test: $(TEST_STAMP) data
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# On a machine with a CUDA GPU, CuPy and PyTorch already installed (no virtualenv, nothing
# downloaded; PYTHON names that interpreter): the oracle suite on the cupy backend, and the GPU
# tests. Without a GPU, `make test` runs the same suite on the GPU backend's kernels compiled
# for the CPU, and nvcc compiles them.
test-gpu:
	PYTHONPATH=. $(PYTHON) -m pytest -m gpu

# The main job: the textbook LeNet on Fashion-MNIST, 10 epochs, with a progress bar; writes
# $(OUT)/checkpoint.npz, metrics.json and curves.png.
demo: $(DEMO_STAMP) data
	$(BIN)/fastconv train --out $(OUT)

lint: $(TEST_STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
