# dusk: `make run` and `make test` are all a fresh clone needs (Python 3.11 and make).
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
DAYS ?= 1
TEST_WORKERS ?= 3
DATA := $(or $(DUSK_DATA_DIR),data)
DBT_TARGET := $(or $(DBT_TARGET_PATH),target)
DBT_LOGS := $(or $(DBT_LOG_PATH),logs)
# what `make clean` removes: what rebuilds itself
REBUILT := $(DBT_TARGET) $(DBT_LOGS) $(DATA)/report $(DATA)/spark
# what `make reset` removes besides: the warehouse (snapshot history included), dlt's state, what the
# nights built (data/state), the run records and logs, the demo's databases, the other environments (data/env)
STATE := $(DATA)/warehouse.duckdb $(DATA)/warehouse.duckdb.wal $(DATA)/served.duckdb $(DATA)/served.duckdb.wal \
	$(DATA)/served.duckdb.next $(DATA)/iceberg $(DATA)/dlt $(DATA)/state $(DATA)/runs $(DATA)/logs $(DATA)/demo $(DATA)/env

export DBT_PROFILES_DIR := $(CURDIR)/profiles

.PHONY: help setup setup-dev setup-browser setup-spark spark-up spark-down run serve ci-slim backfill watch status report simulate simulate-check chaos proof-spark badinput canary proof cdc-setup cdc-drop test lint format docs bench bench-night bench-scale clean reset

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-10s\033[0m %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.installed: requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -r requirements.txt
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed ## Create .venv from the pinned requirements

setup-dev: $(VENV)/.installed-dev ## Create .venv with the development tools too

$(VENV)/.installed-spark: requirements-spark.txt $(VENV)/.installed-dev
	@command -v java >/dev/null || { echo "Spark needs Java 17: apt-get install openjdk-17-jre-headless"; exit 2; }
	test -f /usr/share/java/jarjar.jar -a -f /usr/share/java/postgresql.jar -a -f /usr/share/java/sqlite-jdbc.jar || \
		{ $$(command -v sudo) apt-get update -qq && $$(command -v sudo) apt-get install -y -qq libjarjar-java libpostgresql-jdbc-java libxerial-sqlite-jdbc-java; }
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -r requirements-spark.txt
	$(BIN)/python -m dusk.spark
	touch $@

setup-spark: $(VENV)/.installed-spark ## The Spark engine (DUSK_TARGET=spark): pinned pyspark + dbt-spark, Iceberg's jars, JDBC drivers from Debian (needs root or sudo), Java checked

SPARK_CATALOG ?= $(or $(DUSK_ICEBERG_CATALOG_URI),postgresql://postgres@127.0.0.1:5432/dusk_iceberg)

spark-up: setup-spark ## Start a Spark master, worker and Thrift server on 127.0.0.1 (Iceberg catalog SPARK_CATALOG, default the local PostgreSQL's dusk_iceberg)
	DUSK_ICEBERG_CATALOG_URI=$(SPARK_CATALOG) $(BIN)/python -m dusk.spark up

spark-down: ## Stop what spark-up started
	DUSK_ICEBERG_CATALOG_URI=$(SPARK_CATALOG) $(BIN)/python -m dusk.spark down

setup-browser: ## Install Debian's chromium (the report's browser test; needs root or sudo)
	command -v chromium >/dev/null || { $$(command -v sudo) apt-get update -qq && $$(command -v sudo) apt-get install -y -qq chromium; }

run: setup ## Run the night: ingest -> dbt build -> monitor -> publish -> report -> alert (creates the demo shop on first use)
	$(BIN)/python -m dusk run

backfill: setup ## Re-extract and rebuild START..END (days, UTC) without moving the cursors (make backfill START=2026-01-01 END=2026-01-07 [SOURCE=shop])
	@test -n "$(START)" -a -n "$(END)" || { echo "usage: make backfill START=YYYY-MM-DD END=YYYY-MM-DD [SOURCE=name]"; exit 2; }
	$(BIN)/python -m dusk backfill --start $(START) --end $(END) $(if $(SOURCE),--source $(SOURCE))

status: setup ## The last runs, sources, freshness, failing tests and quarantine (from the run ledger)
	$(BIN)/python -m dusk status

serve: setup ## Run the nights on a schedule in one resident process (SCHEDULE="0 2 * * *", cron syntax, local time; Ctrl-C stops)
	$(BIN)/python -m dusk serve $(if $(SCHEDULE),--schedule "$(SCHEDULE)")

watch: setup ## Run the night whenever a new file lands in a landing folder (polls every 30 s; Ctrl-C stops)
	$(BIN)/python -m dusk watch

report: setup ## Write the HTML report from the run ledger (data/report/index.html) and print its path
	$(BIN)/python -m dusk report

simulate: setup ## Advance the demo shop by DAYS days of activity (make simulate DAYS=3)
	$(BIN)/python -m dusk simulate --days $(DAYS)

cdc-setup: setup ## Create the PostgreSQL publication and replication slot of SOURCE's `deletes: cdc` tables
	@test -n "$(SOURCE)" || { echo "usage: make cdc-setup SOURCE=<name in sources.yml>"; exit 2; }
	$(BIN)/python -m dusk cdc setup $(SOURCE)

cdc-drop: setup ## Drop SOURCE's replication slot and publication (the server stops keeping WAL for it)
	@test -n "$(SOURCE)" || { echo "usage: make cdc-drop SOURCE=<name in sources.yml>"; exit 2; }
	$(BIN)/python -m dusk cdc drop $(SOURCE)

test: setup-dev ## Run the test suite (pytest in TEST_WORKERS=3 processes, each file in one; the proof suites at a small size, 2 nights and 2 kills, on DuckDB and PostgreSQL)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not spark_proof"

proof-spark: setup-dev ## The proof suites (simulate-check, chaos, canary) on Spark at a small size (2 nights, 2 kills); needs make setup-spark (CI's own step)
	$(BIN)/python -m pytest -n 2 --dist load -m spark_proof tests/proof

ci-slim: setup ## Slim CI for a change: build and test in the ci environment only what changed against prod's last night, reading the rest from prod's published data, then show what it changes in prod's data
	$(BIN)/python -m dusk --env ci run --defer
	$(BIN)/python -m dusk --env ci diff

simulate-check: setup-dev ## N simulated nights on each engine, every invariant checked after each (make simulate-check NIGHTS=30 SEED=7 [TARGET=postgres])
	$(BIN)/python -m pytest -p no:xdist -m simulate tests/proof --nights $(or $(NIGHTS),30) $(if $(SEED),--seed $(SEED)) $(if $(TARGET),-k $(TARGET))

chaos: setup-dev ## KILLS SIGKILLs at random instants of a night on each engine, each followed by a rerun compared with an uninterrupted run (make chaos KILLS=30 SEED=7 [TARGET=postgres])
	$(BIN)/python -m pytest -p no:xdist -m chaos tests/proof --kills $(or $(KILLS),30) $(if $(SEED),--seed $(SEED)) $(if $(TARGET),-k $(TARGET))

badinput: setup-dev ## The catalogue of bad inputs, each with its expected outcome asserted
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m badinput

canary: setup-dev ## A canary secret for every source; after a failing and a passing night it must be nowhere
	$(BIN)/python -m pytest -p no:xdist -m canary tests/proof

lint: setup-dev ## ruff (lint + format check), mypy, the import layering (lint-imports), sqlfluff on the dbt models
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	DUSK_WAREHOUSE=:memory: $(BIN)/sqlfluff lint models data-tests

format: setup-dev ## Apply ruff's and sqlfluff's fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	DUSK_WAREHOUSE=:memory: $(BIN)/sqlfluff fix models data-tests

bench: setup-dev ## Every speed figure with its target and PASS/MISS: TPC-H lineitem from PostgreSQL (BENCH_SF=1, or e.g. 1,5: COPY limit, full load, 1% churn nights, peak memory), the engines, then the demo at 1x and 100x (bench-scale; BENCH_SCALE=0 leaves it out)
	$(BIN)/python benchmarks/bench_database.py
	@if [ "$${BENCH_SCALE:-100}" != 0 ]; then $(BIN)/python benchmarks/bench_scale.py; fi

bench-night: setup-dev ## A full, a quiet and a one-source demo night, as ratios (BENCH_RUNS=3, BENCH_TARGET=duckdb|postgres|spark)
	$(BIN)/python benchmarks/bench_night.py

bench-scale: setup-dev ## The demo at 1x and 100x: first night, churn nights as a ratio, peak memory (BENCH_SCALE=100, BENCH_RUNS=3)
	$(BIN)/python benchmarks/bench_scale.py

docs: setup ## Serve the dbt docs of the last run on http://127.0.0.1:8080
	$(BIN)/dbt docs serve --port 8080 --host 127.0.0.1 --no-browser

clean: ## Remove what rebuilds itself (dbt's target and logs, the report, Spark's scratch); keeps every datum, .venv too
	@for path in $(REBUILT); do if [ -e "$$path" ]; then echo "removing $$path"; rm -rf "$$path"; fi; done

reset: ## DESTRUCTIVE, needs CONFIRM=yes: also the warehouse with its snapshot history, dlt's state, run records, the demo's databases; keeps the landing folder and data/secrets (the PII salt)
	@test "$(CONFIRM)" = yes || { echo "make reset deletes the warehouse, with the snapshot history no source can rebuild, and dlt's state (everything is extracted again). If you mean it: make reset CONFIRM=yes"; exit 2; }
	@for path in $(REBUILT) $(STATE); do if [ -e "$$path" ]; then echo "removing $$path"; rm -rf "$$path"; fi; done
	@echo "kept: $(DATA)/landing (with its archive) and $(DATA)/secrets; a PostgreSQL warehouse or a catalog on a server is not touched (drop its database yourself)"
