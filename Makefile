# `make repro` runs the pipeline, `make test` the test suite; both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
PORT ?= 5000
STORE := sqlite:///$(CURDIR)/mlflow.db
export PATH := $(BIN):$(PATH)

.PHONY: install install-dev install-team repro reference test test-slow lint format ui server bench clean \
	services-up services-down services-status serve optuna-dashboard screenshots

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-installs only when the dependency pins change.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e .
	touch $@

# The dev extras include team mode's packages: the tests start the team services.
$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,team]'
	touch $@

$(VENV)/.installed-team: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[team]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev
install-team: $(VENV)/.installed-team

repro: install
	dvc repro

# The reference experiments E1-E6 and the better recipes, 3 seeds each (about 30 min on 2 cores).
reference: install
	dvc repro reference/dvc.yaml

# Two workers, one test file each at a time (a file's fixtures stay in one process): about 13 min
# instead of 20 on 2 cores, where most of a test's time is single-threaded process start-up.
# TEST_WORKERS=0 runs the suite in this process.
TEST_WORKERS ?= 2
test: install-dev
	pytest -n $(TEST_WORKERS) --dist loadfile

test-slow: install-dev
	pytest -m slow

# ruff: lint rules and formatting in pyproject.toml ([tool.ruff]).
lint: install-dev
	ruff check src tests
	ruff format --check src tests

format: install-dev
	ruff check --fix src tests
	ruff format src tests

# The MLflow UI over the project's store for one person: one light process (one worker, no job
# runner for MLflow's GenAI jobs). It prints each experiment's runs table: MLflow 3's UI
# otherwise opens an experiment on its GenAI overview (docs/tracking.md).
UI_OPTIONS := --host 127.0.0.1 --port $(PORT) --workers 1
ui: install
	@echo "MLflow UI on http://127.0.0.1:$(PORT); the runs of each experiment:"
	@MLFLOW_TRACKING_URI=$(STORE) python -m nnlab.tracking.ui urls --port $(PORT)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --backend-store-uri $(STORE) \
		--default-artifact-root $(CURDIR)/mlartifacts $(UI_OPTIONS)

server: install
	mlflow server --backend-store-uri $(STORE) --artifacts-destination $(CURDIR)/mlartifacts --host 127.0.0.1 --port $(PORT)

# docs/mlflow-*.png from the real UI in headless Chromium, over the project's store (after make repro
# and a search): python -m nnlab.screenshots --help.
screenshots: install
	python -m nnlab.screenshots

# Optuna's dashboard over the search studies (docs/search.md), loopback only:
# $$NNLAB_OPTUNA_STORAGE (a team database), else optuna.db at the root. OPTUNA_PORT=8081 to move it.
OPTUNA_PORT ?= 8080
optuna-dashboard: install
	@storage="$${NNLAB_OPTUNA_STORAGE:-sqlite:///$(CURDIR)/optuna.db}"; \
	python -c "import sys, optuna; optuna.storages.RDBStorage(sys.argv[1])" "$$storage" && \
	echo "Optuna dashboard on http://127.0.0.1:$(OPTUNA_PORT)" && \
	optuna-dashboard "$$storage" --host 127.0.0.1 --port $(OPTUNA_PORT)

# Team mode (docs/deploy.md): PostgreSQL, S3 (SeaweedFS), MLflow server.
services-up: install-team
	python -m nnlab.team up

services-down: install-team
	python -m nnlab.team down

services-status: install-team
	python -m nnlab.team status

# A single-node Slurm on 127.0.0.1 (docs/cluster.md): munge, MariaDB, slurmdbd, slurmctld, slurmd
# from Debian's slurm-wlm, munge, slurmdbd and mariadb-server; state in .cluster/.
# Then `source .cluster/env` and sinfo, sbatch, srun, sacct, hydra/launcher=slurm use it.
.PHONY: cluster-up cluster-down cluster-status
cluster-up: install
	python -m nnlab.cluster up

cluster-down: install
	python -m nnlab.cluster down

cluster-status: install
	python -m nnlab.cluster status

# The champion over HTTP, from MLFLOW_TRACKING_URI (source .services/env: the team server),
# else the embedded store. POST a JSON batch to http://127.0.0.1:$(SERVE_PORT)/invocations.
SERVE_PORT ?= 5001
SERVE_MODEL ?= models:/nnlab-mnist_cnn@champion
serve: install
	@export MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-$(STORE)}; \
	python -m nnlab.tracking.ui check-model $(SERVE_MODEL) && \
	mlflow models serve -m $(SERVE_MODEL) --env-manager local -h 127.0.0.1 -p $(SERVE_PORT)

# Speed: nnlab's training against a plain PyTorch loop, stage start-up, dvc repro (reports/bench.md).
# BENCH_ARGS=--quick for a short run; see python -m nnlab.bench --help.
bench: install
	python -m nnlab.bench $(BENCH_ARGS)

clean:
	rm -rf logs dvc_plots

# Team mode: the team remote's copy of the pipeline (its data and models: what `dvc push -r team`
# of a `make repro` uploaded). The reference models are never on the remote (reference/dvc.yaml
# does not cache them): one line says so, and how many this clone has.
.PHONY: pull plots-page
pull:
	dvc pull -r team
	@echo "reference models (reference/models/*): not on the team remote (never cached);" \
		"$$(ls -d reference/models/*/ 2>/dev/null | wc -l) in this clone; make reference trains them here"

# The offline page of `dvc plots show` (.dvc/plots/page.html): Vega, Vega-Lite and vega-embed
# from npm, inlined with their licences. Only to update them; the page is committed.
plots-page: install
	tmp=$$(mktemp -d) && npm install --prefix $$tmp --no-audit --no-fund --no-save \
		vega@5 vega-lite@5 vega-embed@6 && python -m nnlab.report.plots_page $$tmp/node_modules; \
		status=$$?; rm -rf $$tmp; exit $$status
