# Two commands do all set-up on a fresh machine: `make up` and `make test`.
#   make up ARGS="--model /path/to/checkpoint"   passes flags to `talaria up`
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed
# torch is pinned by constraints.txt (2.13.0; a +cpu build matches too). Set TORCH_INDEX to an extra
# wheel index (e.g. PyTorch's CPU index) where the default registry would pull a CUDA build;
# GPU hosts: see Dockerfile.cloud.
TORCH_INDEX ?=
ARGS ?=

.PHONY: up test setup clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Talaria needs Python >= 3.11; run: make PYTHON=python3.11 ..." >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt --no-deps $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) torch
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

up: $(STAMP)
	$(BIN)/talaria up $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
