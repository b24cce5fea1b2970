# Both targets set up everything they need on a fresh machine with nothing but Python 3.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test demo lint clean

$(BIN)/fastconv: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev,plot]'
	touch $@

test: $(BIN)/fastconv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

demo: $(BIN)/fastconv
	$(BIN)/fastconv demo

lint: $(BIN)/fastconv
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
