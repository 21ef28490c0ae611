# Two commands do everything on a new machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install test test-fast demo clean

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Lattice needs Python 3.11 or newer; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

install: $(BIN)/.installed

# The whole suite, slow tests included (real Envoys, real processes); two workers for two cores.
test: install
	$(BIN)/pytest -n 2 --dist loadgroup -q

# Everything but the slow tests, for a quick loop while editing.
test-fast: install
	$(BIN)/pytest -q -m "not slow"

demo: install
	$(BIN)/lattice demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
