# The two commands a new user needs: `make run` and `make test`.
# Both prepare the host first (idempotent; see scripts/setup-host.sh).
VENV := .venv
LISTEN ?= 0.0.0.0:9826

.PHONY: setup run test lint bench clean

setup:
	@bash scripts/setup-host.sh

run: setup
	$(VENV)/bin/orb8 run --listen $(LISTEN)

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check exporter tests benchmarks tools
	$(VENV)/bin/ruff format --check exporter tests benchmarks tools
	$(VENV)/bin/mypy exporter

bench: setup
	$(VENV)/bin/python benchmarks/syscall_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info
