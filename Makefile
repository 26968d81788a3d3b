PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job: the paper's Table 1 experiment (200 peers, 4 stages, 5000 iterations).
run: $(STAMP)
	$(BIN)/p2pllm-sim experiment=paper_table1 hydra.run.dir=outputs/paper_table1

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m benchmarks.core

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
