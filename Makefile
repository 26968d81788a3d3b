PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-slow dashboard readme-figures bench bench-equilibrium bench-routing bench-sweeps bench-ledger bench-dynamics certify verify welfare learning security design petals clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,cluster,optuna,evm,viz]'
	touch $(STAMP)

# The main job: the paper's Table 1 experiment (200 peers, 4 stages, 5000 iterations) as section
# 5.2 states it, then the calibration of the settings the paper leaves out (T, start price, step
# size, share of peers moving, allocation reading) and the calibrated experiment, printed beside
# the literal one and the paper.
run: $(STAMP)
	$(BIN)/p2pllm-sim experiment=paper_table1 hydra.run.dir=outputs/paper_table1
	$(BIN)/python -m analysis calibrate --table paper_table1 --fit market.temperature network.initial_price \
		market.eta allocation.move_fraction --fixed market.alpha=0.5 --out outputs/paper_table1/calibration \
		--reproduce outputs/paper_table1_calibrated

# -n auto: one pytest worker per core (pytest-xdist); the serial tests (a Ctrl-C sent to a run) then alone
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto -m "not serial and not slow"
	$(BIN)/python -m pytest -q -m serial

# The tests marked slow (a SLURM-free submitit sweep, the Optuna sweep, killing a sweep, the wheel built and
# installed into a fresh venv, eight golden-output configurations): about 2 minutes
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -n auto -m slow

# The interactive dashboard (Mesa's SolaraViz, p2pllm_abm/app.py) on http://127.0.0.1:8765 (DASHBOARD_PORT).
DASHBOARD_PORT ?= 8765
dashboard: $(STAMP)
	@echo "p2pllm-abm dashboard: open http://127.0.0.1:$(DASHBOARD_PORT) (Ctrl-C stops it)"
	$(BIN)/solara run p2pllm_abm.app --host 127.0.0.1 --port $(DASHBOARD_PORT) --no-open --production

# One of each figure for the README (analysis/readme_figures/): every producer, then the copies.
readme-figures: $(STAMP) run certify welfare learning security petals
	$(BIN)/p2pllm-sim experiment=paper_table1_ledger hydra.run.dir=outputs/paper_table1_ledger
	$(BIN)/python -m analysis ledger-figures outputs/paper_table1_ledger
	$(BIN)/p2pllm-sim -m sweep=ledger
	$(BIN)/python -m analysis ledger-figures multirun/sweep_ledger
	for sweep in alpha eta temperature network_size; do \
		$(BIN)/p2pllm-sim -m sweep=$$sweep && $(BIN)/python -m analysis figures multirun/sweep_$$sweep || exit 1; done
	$(BIN)/python -m analysis network-figure --experiment paper_28 --steps 200 --alpha 0.5
	$(BIN)/python -m analysis pareto-figure --experiment paper_28 --steps 200
	$(BIN)/python -m analysis sensitivity --experiment paper_table1 --steps 500 --vary market.alpha=0.2:0.8 \
		market.eta=20:80 market.temperature=0.5:2 --method sobol --samples 32 --out outputs/sensitivity
	$(BIN)/python -m analysis.readme_figures

bench: $(STAMP)
	$(BIN)/python -m benchmarks.core

bench-equilibrium: $(STAMP)
	$(BIN)/python -m benchmarks.equilibrium

bench-routing: $(STAMP)
	$(BIN)/python -m benchmarks.routing

bench-sweeps: $(STAMP)
	$(BIN)/python -m benchmarks.sweeps

bench-ledger: $(STAMP)
	$(BIN)/python -m benchmarks.ledger

bench-dynamics: $(STAMP)
	$(BIN)/python -m benchmarks.network_dynamics

# The equilibrium certification experiment (table + figures in outputs/equilibrium_certification).
certify: $(STAMP)
	$(BIN)/python -m experiments.equilibrium_certification

# The earlier name of certify ('verification' now means only checking outputs).
verify: certify

# The welfare experiment (tables + figure in outputs/welfare).
welfare: $(STAMP)
	$(BIN)/python -m experiments.welfare

# Prices learned from realised revenue vs eq. 5 (table + figure in outputs/learning).
learning: $(STAMP)
	$(BIN)/python -m experiments.learning

# The security experiment (tables + figures in outputs/security).
security: $(STAMP)
	$(BIN)/python -m experiments.security

# Mechanism design by gradients: the cheapest spot check that deters every behaviour (outputs/mechanism_design).
design: $(STAMP)
	$(BIN)/python -m experiments.mechanism_design

# The paper's market against Petals' rules under load, churn and failures (outputs/petals_baseline).
petals: $(STAMP)
	$(BIN)/python -m experiments.petals_baseline

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
