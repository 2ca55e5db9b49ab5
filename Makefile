# Dynamic DICOM Endpoints — the two commands a newcomer needs:
#   make run    install Orthanc + DCMTK (apt) and the package (.venv), run the reference deployment
#   make test   install what the tests need and run the whole suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSTEM_PACKAGES := orthanc dcmtk python3-venv
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test deps deps-system lint typecheck unit integration bench clean

run: deps
	$(BIN)/dde stack up

# The browser tests drive Debian's Chromium (Playwright never downloads a browser here);
# the store tests run on a PostgreSQL server they start (package postgresql); promtool
# (package prometheus) checks the alert rules, docker-compose and haproxy the deployment files.
test unit integration: SYSTEM_PACKAGES += chromium postgresql prometheus docker-compose haproxy orthanc-dicomweb

test: deps
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest

unit: deps
	$(BIN)/pytest tests/unit

integration: deps
	$(BIN)/pytest -m integration

# The nodes case runs PostgreSQL and HAProxy from Debian's packages.
bench: SYSTEM_PACKAGES += postgresql haproxy orthanc-dicomweb
bench: deps
	$(BIN)/python benchmarks/throughput.py

deps: deps-system $(STAMP)

# Debian packages: installed only when missing. Installing Debian's orthanc package also
# enables orthanc.service, which holds ports 4242/8042 that the reference deployment uses
# (and prometheus enables a server only its promtool is wanted from); when this target
# installed one of them, it disables that service again and says so.
deps-system:
	@missing=""; \
	for package in $(SYSTEM_PACKAGES); do \
	  dpkg -s $$package >/dev/null 2>&1 || missing="$$missing $$package"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing || exit 1; \
	  for service in orthanc postgresql prometheus haproxy; do \
	    case "$$missing" in *$$service*) \
	      if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled --quiet $$service 2>/dev/null; then \
	        echo "disabling Debian's $$service.service (this project starts its own processes)"; \
	        $(SUDO) systemctl disable --now $$service >/dev/null 2>&1 || true; \
	      fi;; \
	    esac; \
	  done; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache src/*.egg-info
