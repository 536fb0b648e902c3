# The two commands of the quick start: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch/torchvision pins for these machines (pip takes them from the local disk);
# elsewhere override, e.g. `make TORCH_SPEC= demo` to let pyproject's ranges decide.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-min lint bench clean

$(BIN)/finetune: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip >/dev/null
	test -z "$(TORCH_SPEC)" || $(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install -e '.[dev]'
	touch $(BIN)/finetune

demo: $(BIN)/finetune
	$(BIN)/finetune train

# two test processes (pytest-xdist): 11 min instead of 15.5 on 2 cores; `make TEST_WORKERS=0 test` runs them in one
TEST_WORKERS ?= 2
test: $(BIN)/finetune
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

# the declared minimum (pyproject: torch>=2.4, torchvision>=0.19) in a venv of its own; not run by CI
# (it installs torch 2.4.1 with its CUDA libraries): run it when code touches torch APIs
MIN_VENV := .venv-min
MIN_SPEC ?= torch==2.4.1 torchvision==0.19.1
test-min:
	test -x $(MIN_VENV)/bin/python || $(PYTHON) -m venv $(MIN_VENV)
	printf '%s\n' $(MIN_SPEC) > $(MIN_VENV)/constraints.txt
	$(MIN_VENV)/bin/pip install $(MIN_SPEC)
	$(MIN_VENV)/bin/pip install -c $(MIN_VENV)/constraints.txt -e '.[dev]'
	$(MIN_VENV)/bin/python -m pytest -q

lint: $(BIN)/finetune
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf runs build *.egg-info
