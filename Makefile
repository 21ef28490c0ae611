# Two commands do everything on a new machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install tools lint test test-fast demo bench bench-quick clean

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Lattice needs Python 3.11 or newer; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	@touch $@

install: $(BIN)/.installed

# Tools the tests drive from outside, as a user would, as command:Debian-package pairs: openssl
# s_client for handshakes, tcpdump to look at the wire, iptables/nft and ip for network namespaces
# (test hosts, transparent capture), etcd for control-plane replicas, chromium for the console,
# prometheus for service discovery, curl and node as apps that ignore proxies, clang/wasm-ld/wat2wasm
# for Wasm extensions, docker-registry (CNCF distribution) to pull Wasm modules from an OCI
# registry. Installed with apt if missing (needs root).
TOOLS := openssl:openssl tcpdump:tcpdump iptables:iptables nft:nftables ip:iproute2 setpriv:util-linux \
	etcd:etcd-server etcdctl:etcd-client chromium:chromium chromedriver:chromium-driver \
	prometheus:prometheus curl:curl node:nodejs clang:clang wasm-ld:lld wat2wasm:wabt \
	docker-registry:docker-registry
tools:
	@missing=""; for pair in $(TOOLS); do command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# Formatting and lint (ruff: pyflakes, pycodestyle at 120 columns, bugbear, asyncio rules), the type
# checker (mypy on the packages [tool.mypy] lists), then the layer, cycle and purity checks (a second;
# tests/imports.py). `make test` runs it first.
lint: install
	$(BIN)/ruff format --check lattice tests bench
	$(BIN)/ruff check lattice tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q -p no:randomly -p no:cacheprovider tests/unit/test_layers.py tests/unit/identity/test_identity_purity.py

# The whole suite, slow tests included (real Envoys, real processes); two workers for two cores.
# A failed test runs once more: a few multi-process tests (test_why, the JWKS rotation, plugin
# updates under load) still race timers when two workers share two cores. The rerun is reported
# (R in the progress line, "rerun" in the summary), so a flaky test stays visible until fixed.
test: install tools lint
	$(BIN)/pytest -n 2 --dist loadgroup -q --reruns 1 --reruns-delay 2

# Everything but the slow tests, for a quick loop while editing.
test-fast: install tools
	$(BIN)/pytest -q -m "not slow"

demo: install
	$(BIN)/lattice demo

# Benchmarks (not tests: nothing asserts a time): tables on screen, JSON under bench/results/.
# bench-quick takes a few minutes; bench runs the full sizes (1,000 simulated proxies).
bench: install
	$(BIN)/python bench/run.py

bench-quick: install
	$(BIN)/python bench/run.py --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
