# Two entry points matter: `make run` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Built binaries (kube-apiserver, etcd, kustomize, helm) live outside the clone so a fresh clone reuses them.
export ENERGETISCOPE_CACHE ?= $(HOME)/.cache/energetiscope
DEV_CERTS ?= .dev-certs
PORT ?= 8443

.PHONY: run test install certs controlplane prometheus chromium haproxy bench clean

$(BIN)/energetiscope $(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(VENV)/.installed

install: $(VENV)/.installed

$(DEV_CERTS)/tls.crt: $(VENV)/.installed
	$(BIN)/energetiscope certs create --out $(DEV_CERTS) --dns localhost --ip 127.0.0.1

certs: $(DEV_CERTS)/tls.crt

run: install certs
	@echo
	@echo "EnergetiScope webhook on https://127.0.0.1:$(PORT) (embedded prior predictor). Try, from another shell:"
	@echo "  curl --cacert $(DEV_CERTS)/ca.crt -H 'Content-Type: application/json' --data @examples/admission-review-deployment.json https://127.0.0.1:$(PORT)/mutate"
	@echo
	$(BIN)/energetiscope serve --cert-dir $(DEV_CERTS) --port $(PORT) --host 127.0.0.1

controlplane:
	bash tests/e2e/controlplane/build.sh

prometheus:
	bash tests/tools/install-prometheus.sh

# Debian's chromium for the browser tests (tests/browser); where it cannot be installed they skip, saying why.
chromium:
	bash tests/tools/install-chromium.sh || echo "chromium not installed: tests/browser will be skipped"

# Debian's haproxy for the replica tests (tests/e2e/test_replicas_e2e.py): two webhook processes
# behind a load balancer; where it cannot be installed they skip, saying why.
haproxy:
	bash tests/tools/install-haproxy.sh || echo "haproxy not installed: tests/e2e/test_replicas_e2e.py will be skipped"

test: install controlplane prometheus chromium haproxy
	$(BIN)/python -m pytest

# All benchmarks, tables printed and JSON written to bench/results/ (see bench/README.md).
bench: install prometheus
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(DEV_CERTS) .pytest_cache .hypothesis
