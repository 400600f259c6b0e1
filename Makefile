# The two commands a new user needs: `make run` and `make test`.
# Both prepare the host first (idempotent; see scripts/setup-host.sh).
VENV := .venv
LISTEN ?= 0.0.0.0:9826

.PHONY: setup run test lint bench bench-scale dashboards clean fake-nvml image image-test manifests golden docs lock

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

# Regenerate dashboards/*.json from dashboards/*.py, and their copies in
# deploy/components/grafana-dashboards/ for the sidecar ConfigMaps (commit both).
dashboards: setup
	$(VENV)/bin/python -m dashboards

bench: setup
	$(VENV)/bin/python benchmarks/syscall_overhead.py

# Every figure of the scale issue (20) in one go, under 10 minutes, written as
# one table into benchmarks/RESULTS.md (between the bench-scale markers; the
# scripts' logs and JSON land in build/bench-scale/). SOAK=30 adds the 30-minute
# churn soak; ONLY=footprint,hook refreshes just those rows.
bench-scale: setup
	$(VENV)/bin/python benchmarks/bench_scale.py $(if $(SOAK),--soak $(SOAK)) $(if $(ONLY),--only $(ONLY))

# A fake libnvidia-ml.so.1 replaying a real NVML capture (tests/fakes/nvml):
# LD_LIBRARY_PATH=build/fake-nvml makes pynvml load it. The test session
# builds it too, so `make test` needs no extra step.
fake-nvml: build/fake-nvml/libnvidia-ml.so.1

build/fake-nvml/libnvidia-ml.so.1: tests/fakes/nvml/fake_nvml.c
	@mkdir -p build/fake-nvml
	gcc -shared -fPIC -O2 -Wall -Wextra -o $@ $<
# Container image localhost/orb8:<version>, built here without any registry
# (mmdebstrap base + podman; see scripts/build-image.sh). Elsewhere:
# podman build -f Containerfile .
image:
	@bash scripts/build-image.sh

# The image under the DaemonSet's exact privileges (also part of `make test`).
image-test: setup
	$(VENV)/bin/python -m pytest tests/kernel/test_container.py $(PYTEST_ARGS)

# Rewrite docs/metrics.md's generated parts (probe-declared families, the OTLP table).
docs: setup
	$(VENV)/bin/python -m exporter.catalogue --write

# Regenerate tests/golden/*.txt, the whole /metrics of a fixed node (review the diff).
golden: setup
	$(VENV)/bin/python -m tests.golden

# Regenerate deploy/prometheus-operator/prometheusrule.yaml from alerts/.
manifests: setup
	$(VENV)/bin/python tools/gen_prometheusrule.py

# Re-resolve requirements.lock (the image) and requirements-test.lock (make
# setup) from pyproject.toml with hashes; review and commit the diff.
lock:
	@bash scripts/lock.sh

clean:
	rm -rf $(VENV) build *.egg-info
