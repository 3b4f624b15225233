# The two set-up commands of the README: `make run` and `make test`.
# Each one installs what a bare Debian bookworm lacks, creates the venv, builds the Cython
# core and fetches what it needs.
#
# They never stop, start, enable or disable a service of the host: on a dom0, stopping
# xendomains saves or shuts down every guest. apt-get installs only packages that ship no
# service; the peers whose packages would install one (xen-utils-4.17, prometheus,
# nats-server) are extracted into a cache instead (`make deb-peers`, mux/debpeers.py).

PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
# What the build needs: the venv module, Python's headers and a C compiler.
BUILD_PKGS := python3-venv python3-dev gcc libc6-dev
# What the tests need, packages that ship no service: the real libxenstore clients, the
# real xenctrl.h (libxen-dev, which brings Xen's libraries), socat for the raw-socket
# tests, PEP 517's frontend for the packaging tests, and zsh for the completion test.
TEST_PKGS := xenstore-utils libxen-dev socat python3-build zsh

.PHONY: run test lint bench bench-full chaos build build-deps test-deps deb-peers clean man completion

# apt-get install of the packages of $(1) that dpkg does not list as installed; nothing
# else. Off Debian (no dpkg-query) it says what to install and goes on.
define apt_install
	@if ! command -v dpkg-query >/dev/null 2>&1; then \
		echo "not a Debian system: install the equivalents of $(1) yourself"; exit 0; \
	fi; \
	missing=""; for p in $(1); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

build-deps:
	$(call apt_install,$(BUILD_PKGS))

test-deps:
	$(call apt_install,$(TEST_PKGS))

# The peers, from the system if installed, else extracted into .cache/deb/root
# ($$XENMUX_DEB_CACHE): the system's Python runs it, no venv needed.
deb-peers:
	$(PY) -m mux.debpeers fetch

$(BIN)/python: | build-deps
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# What the C extensions are built from: mux._fast (mux/fastcore/ holds its concern files
# and headers), the sim's mux.sim._simfast and the bench's mux.bench._floor.
EXT_SRC := mux/_fast.pyx mux/_fast.pxd $(wildcard mux/fastcore/*.pxi mux/fastcore/*.h) \
	mux/sim/_simfast.pyx mux/sim/shm_layout.h mux/sim/hostpath.h mux/bench/_floor.pyx mux/bench/floor.h

# Editable install so that tests import the freshly built extensions in place.
$(VENV)/.installed: $(BIN)/python pyproject.toml setup.py $(EXT_SRC)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

build: $(VENV)/.installed

run: build
	$(BIN)/xenmux demo

# Two workers, a test file to each (a module's shared sim or NATS server stays in one
# worker): the suite mostly waits on processes it starts, so it takes half the time on two
# cores. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: build test-deps deb-peers
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 tests

lint: build
	$(BIN)/ruff check mux tests bench
	$(BIN)/ruff format --check mux tests bench

bench: build test-deps deb-peers
	$(BIN)/python -m pytest -q bench --benchmark-only

# The harness's full run (37 minutes on two quiet cores), in three parts merged into one
# table: a part that completed is kept, so an interrupted run resumes at the next
# part (`make bench-full` again). Copy $(BENCH_OUT)'s results.md, results.json and plots
# to bench/results/ to publish them. bench/README.md has the figures and how to read them.
BENCH_OUT   ?= xenmux-bench
BENCH_PARTS := $(BENCH_OUT)/parts/small $(BENCH_OUT)/parts/4000 $(BENCH_OUT)/parts/32000

bench-full: $(BENCH_PARTS:%=%/results.json)
	$(BIN)/xenmux bench --merge $(subst $(eval) ,$(comma),$(BENCH_PARTS)) --out $(BENCH_OUT)

$(BENCH_OUT)/parts/small/results.json: | build test-deps deb-peers
	$(BIN)/xenmux bench --sizes 100,1000 --daemon-sizes "" --out $(@D).partial
	rm -rf $(@D) && mv $(@D).partial $(@D)

$(BENCH_OUT)/parts/4000/results.json: | build test-deps deb-peers
	$(BIN)/xenmux bench --sizes 4000 --daemon-sizes "" --out $(@D).partial
	rm -rf $(@D) && mv $(@D).partial $(@D)

$(BENCH_OUT)/parts/32000/results.json: | build test-deps deb-peers
	$(BIN)/xenmux bench --sizes "" --daemon-sizes 32000 --out $(@D).partial
	rm -rf $(@D) && mv $(@D).partial $(@D)

comma := ,

# Five minutes of churn and faults on a simulated host of 1,000 domains, checked by the
# oracle (docs/chaos.md); `make test` runs a 30-second one.
chaos: build
	$(BIN)/xenmux chaos --seconds 300

# Man pages and shell completion, generated from the argument parsers into packaging/, which
# the wheel installs under PREFIX/share (pyproject.toml's data files). Run after changing an
# option: tests/e2e/test_manpages.py fails while they are not current.
MAN_DIR        := packaging/man
COMPLETION_DIR := packaging/completion

man: build
	$(BIN)/python -m mux.manpages $(MAN_DIR)

completion: build
	$(BIN)/python -m mux.completion $(COMPLETION_DIR)

clean:
	rm -rf build *.egg-info mux/_fast.c mux/_fast*.so mux/sim/_simfast*.so mux/bench/_floor*.so
