# The two commands a new user needs: `make run` and `make test`.
# Both prepare the host first (idempotent; see scripts/setup-host.sh).
VENV := .venv
LISTEN ?= 0.0.0.0:9826

.PHONY: setup run test lint bench clean image image-test manifests

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

# Container image localhost/orb8:<version>, built here without any registry
# (mmdebstrap base + podman; see scripts/build-image.sh). Elsewhere:
# podman build -f Containerfile .
image:
	@bash scripts/build-image.sh

# The image under the DaemonSet's exact privileges (also part of `make test`).
image-test: setup
	$(VENV)/bin/python -m pytest tests/kernel/test_container.py $(PYTEST_ARGS)

# Regenerate deploy/prometheus-operator/prometheusrule.yaml from alerts/.
manifests: setup
	$(VENV)/bin/python tools/gen_prometheusrule.py

clean:
	rm -rf $(VENV) build *.egg-info
