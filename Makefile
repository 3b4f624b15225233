# The two set-up commands of the README: `make run` and `make test`.
# Each one creates the venv, builds the Cython core and installs what it needs.

PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
# Debian packages the tests talk to: the real libxenstore clients, the real
# xenctrl.h, the real C xenstored/oxenstored, and a real Prometheus server.
DEB_PKGS := xenstore-utils libxen-dev xen-utils-4.17 prometheus

.PHONY: run test lint bench chaos deb-packages build clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# What the C extensions are built from: mux._fast (mux/fastcore/ holds its concern files
# and headers), the sim's mux.sim._simfast and the bench's mux.bench._floor.
EXT_SRC := mux/_fast.pyx mux/_fast.pxd $(wildcard mux/fastcore/*.pxi mux/fastcore/*.h) \
	mux/sim/_simfast.pyx mux/sim/shm_layout.h mux/bench/_floor.pyx mux/bench/floor.h

# Editable install so that tests import the freshly built extensions in place.
$(VENV)/.installed: $(BIN)/python pyproject.toml setup.py $(EXT_SRC)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

build: $(VENV)/.installed

deb-packages:
	@missing=""; for p in $(DEB_PKGS); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
		$$SUDO systemctl disable --now xen-watchdog xencommons xendomains prometheus 2>/dev/null || true; \
	fi

run: build
	$(BIN)/xenmux demo

test: build deb-packages
	$(BIN)/python -m pytest -q tests

lint: build
	$(BIN)/ruff check mux tests bench
	$(BIN)/ruff format --check mux tests bench

bench: build deb-packages
	$(BIN)/python -m pytest -q bench --benchmark-only

# Five minutes of churn and faults on a simulated host of 1,000 domains, checked by the
# oracle (docs/chaos.md); `make test` runs a 30-second one.
chaos: build
	$(BIN)/xenmux chaos --seconds 300

clean:
	rm -rf build *.egg-info mux/_fast.c mux/_fast*.so mux/sim/_simfast*.so mux/bench/_floor*.so
