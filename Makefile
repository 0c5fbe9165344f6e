# Two commands set everything up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU build of torch; on a GPU machine install a CUDA torch into $(VENV) first and it is kept.
TORCH_CPU ?= torch==2.13.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install install-dev serve test lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

install: $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH_CPU)
	$(PIP) install -q -c requirements/constraints.txt -e .

install-dev: $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH_CPU)
	$(PIP) install -q -c requirements/constraints.txt -e ".[dev,loadtest,plots]"

serve: install
	$(VENV)/bin/inkwell-serve $(ARGS)

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
