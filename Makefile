# Energy ingest: one entry point for developers, CI and operators.
# `make up` / `make down` run the local stack (no Docker); `make test` is what CI runs.

PYTHON     ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
UV_VENV    := .stack/uv
UV         := $(UV_VENV)/bin/uv
UV_VERSION := 0.13.9
STACK      := $(PY) deploy/local/stack.py

.PHONY: help venv up down status test lint format bench bench-consumer bench-consumer-registers bench-gateway bench-gateway-memory bench-broken-clients bench-analytics bench-freshness bench-recovery demo schemas clean

help:
	@echo "make up        start Kafka, PostgreSQL, migrations, gateway, consumers, analytics"
	@echo "make down      stop everything make up started"
	@echo "make status    what is running"
	@echo "make test      the test suite against real Kafka and PostgreSQL"
	@echo "make lint      ruff and mypy"
	@echo "make bench     every benchmark (bench-consumer, bench-gateway, bench-gateway-memory, bench-analytics, ...)"
	@echo "make demo      a simulated fleet through the running stack, then analytics"

# The venv is built from uv.lock exactly; uv itself lives in its own small venv.
$(UV):
	@$(PYTHON) -m venv $(UV_VENV)
	@$(UV_VENV)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	@UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --locked --quiet
	@touch $@

venv: $(VENV)/.synced

up: venv
	@$(STACK) up

down:
	@if [ -x $(PY) ]; then $(STACK) down; else echo "nothing to stop (no venv)"; fi

status: venv
	@$(STACK) status

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	@# The stack script imports its helpers by file name (it runs as a plain script).
	MYPYPATH=deploy/local $(VENV)/bin/mypy deploy/local/stack.py
	$(PY) -m schemas --check

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

schemas: venv
	$(PY) -m schemas

bench: bench-consumer bench-consumer-registers bench-gateway bench-gateway-memory bench-broken-clients bench-analytics bench-freshness bench-recovery

# Benchmarks that need Kafka and PostgreSQL and find none given (KAFKA_BOOTSTRAP_SERVERS and
# DATABASE_URL) start a private stack in .stack/bench on ports BENCH_KAFKA_PORT (28092),
# BENCH_KAFKA_CONTROLLER_PORT (28093) and BENCH_PG_PORT (28432).

# BENCH_CONSUMER_ARGS e.g. "--events 500000".
bench-consumer: venv
	@$(PY) -m bench.consumer_throughput $(BENCH_CONSUMER_ARGS)

# The same with cumulative registers (kwhRegisterDc) instead of interval energy.
bench-consumer-registers: venv
	@$(PY) -m bench.consumer_throughput --registers $(BENCH_CONSUMER_ARGS)

# One day of 10,000 vehicles and meters, then per-vehicle and fleet query latency (private
# stack); BENCH_ANALYTICS_ARGS e.g. "--vehicles 500".
bench-analytics: venv
	@$(PY) -m bench.analytics_latency $(BENCH_ANALYTICS_ARGS)

# The gateway's own processes (GATEWAY_WORKERS, default one per core) against the running
# Kafka, else a private stack, driven by wrk; BENCH_GATEWAY_ARGS e.g. "--workers 4 --duration 30".
# wrk comes from Debian's package when missing (as root); otherwise this says what to install.
bench-gateway: venv
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  echo "bench-gateway: installing wrk (Debian package)" >&2 && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } || \
	  { echo "bench-gateway: wrk is missing: apt-get install wrk (Debian, Ubuntu)" >&2; exit 2; }
	@$(PY) -m bench.gateway_throughput $(BENCH_GATEWAY_ARGS)

# One gateway worker's peak RSS under 16 concurrent worst-case bodies (fails over 200 MB), and
# the batch scan's cost against parsing; BENCH_GATEWAY_MEMORY_ARGS e.g. "--rounds 5".
bench-gateway-memory: venv
	@$(PY) -m bench.gateway_memory $(BENCH_GATEWAY_MEMORY_ARGS)

# Normal ingest into one gateway worker, alone and then while 600 idle connections, half-sent
# heads, dribbled bodies and 8 hostile bodies at once attack it; then the same attack without
# read deadlines. Fails on a normal request not 202, RSS over 200 MB, a large error body or a
# held connection left open past its deadline; BENCH_BROKEN_CLIENTS_ARGS e.g. "--duration 30".
bench-broken-clients: venv
	@$(PY) -m bench.broken_clients $(BENCH_BROKEN_CLIENTS_ARGS)

# 202 -> visible in live status at 333 and 10,000 events/s, through the running stack (make up).
bench-freshness: venv
	@$(PY) -m bench.freshness $(BENCH_FRESHNESS_ARGS)

# kill -9 of a meter worker under traffic, restarted at once or after 3 s: how long partitions
# wait, with aiokafka's former group settings and the workers' own (private stack);
# BENCH_RECOVERY_ARGS e.g. "--kills 6 --rate 1000".
bench-recovery: venv
	@$(PY) -m bench.recovery $(BENCH_RECOVERY_ARGS)

demo: venv
	@$(PY) -m deploy.simulator.demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
