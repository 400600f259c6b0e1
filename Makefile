# The two commands a new user needs: `make run` and `make test`.
# Both prepare the host first (idempotent; see scripts/setup-host.sh).
VENV := .venv
LISTEN ?= 0.0.0.0:9091

.PHONY: setup run test lint bench dashboards clean

setup:
	@bash scripts/setup-host.sh

run: setup
	$(VENV)/bin/orb8 run --listen $(LISTEN)

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check exporter tests benchmarks tools dashboards
	$(VENV)/bin/ruff format --check exporter tests benchmarks tools dashboards
	$(VENV)/bin/mypy exporter dashboards

# Regenerate dashboards/*.json from dashboards/*.py (commit the result).
dashboards: setup
	$(VENV)/bin/python -m dashboards

bench: setup
	$(VENV)/bin/python benchmarks/syscall_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info
