# quicflow build, test and tooling targets.
# `make demo` and `make test` are the two set-up commands; everything they need
# (virtualenv, Python packages, Debian packages) is installed on first use.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

PYTHON      ?= python3
VENV        := .venv
VPY         := $(VENV)/bin/python
STAMP       := $(VENV)/.stamp
# Per-test limit (seconds); the whole suite is meant to stay under 15 minutes.
TEST_TIMEOUT ?= 300
PYTEST_ARGS ?=

# iproute2 (ip, tc): network-namespace tests; libssl-dev: the native crypto engine's
# headers (the package builds without them, falling back to the pure-Python engine);
# golang-go + quic-go's sources: the quic-go interop peer (tests/peers/quicgo, built
# offline in GOPATH mode); cargo + quinn's crates: the quinn peer (tests/peers/quinn, built
# offline against /usr/share/cargo/registry); both cached in ~/.cache/quicflow-peers.
# tshark: the key-log test (its debconf question is preseeded below).
# ngtcp2-client, ngtcp2-server: gtlsclient/gtlsserver, the ngtcp2 HTTP/3 interop peers;
# nodejs: runs the quiche peer (npm comes with the machine's Node build).
DEB_PACKAGES := iproute2 nftables libssl-dev golang-go golang-github-lucas-clemente-quic-go-dev \
                cargo librust-quinn-dev tshark ngtcp2-client ngtcp2-server nodejs
DEB_BINARIES := ip tc nft go cargo tshark gtlsclient gtlsserver node
DEB_FILES    := /usr/include/openssl/evp.h \
                /usr/share/gocode/src/github.com/lucas-clemente/quic-go/server.go \
                /usr/share/doc/librust-quinn-dev/copyright

.PHONY: venv deps peers test lint demo bench lossbench fuzz clean

# deps first: the native crypto engine is compiled when the venv installs quicflow
venv: deps $(STAMP)

NATIVE_SOURCES := $(shell find src/quicflow/crypto src/quicflow/datapath -name '*.c' -o -name '*.h' 2>/dev/null)

$(STAMP): pyproject.toml setup.py $(NATIVE_SOURCES)
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q -e '.[test]'
	@touch $@

deps:
	@missing=""; \
	for b in $(DEB_BINARIES); do command -v $$b >/dev/null 2>&1 || missing="$$missing $$b"; done; \
	for f in $(DEB_FILES); do test -e $$f || missing="$$missing $$f"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "deps: missing$$missing; run 'make deps' as root to install: $(DEB_PACKAGES)" >&2; \
		exit 0; \
	fi; \
	echo "deps: missing$$missing; installing $(DEB_PACKAGES)"; \
	echo "wireshark-common wireshark-common/install-setuid boolean false" \
		| debconf-set-selections; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
		$(DEB_PACKAGES) </dev/null >/dev/null

# The compiled interop peers (tests/peers: quic-go, quinn), picoquic's Python 3.12 venv
# (PyPI aiopquic) and quiche's node_modules (npm @matrixai/quic), built once per cache key into
# ~/.cache/quicflow-peers, before pytest so that a first build (quinn: ~2 minutes) does not
# count against a test's time limit. A peer that cannot be built is reported by its tests.
peers: venv
	@$(VPY) -m tests.support.quicgo >/dev/null || true
	@$(VPY) -m tests.support.quinn >/dev/null || true
	@$(VPY) -m tests.support.picoquic >/dev/null || true
	@$(VPY) -m tests.support.quiche >/dev/null || true

test: venv peers
	$(VPY) -m pytest -q -x --timeout=$(TEST_TIMEOUT) $(PYTEST_ARGS)

# mypy: MYPYPATH + explicit package bases so that src/quicflow maps to `quicflow.*`
# whether or not src/quicflow/__init__.py exists.
lint: venv
	@rc=0; \
	$(VENV)/bin/ruff check src tests || rc=1; \
	MYPYPATH=src $(VENV)/bin/mypy --strict --explicit-package-bases src || rc=1; \
	exit $$rc

demo: venv
	$(VENV)/bin/quicflow demo

bench: venv
	$(VPY) bench/run.py

# the loss matrix (issue 10): LOSSBENCH_ARGS="--runs 3" for a shorter run
LOSSBENCH_ARGS ?=
lossbench: venv
	$(VPY) bench/lossbench.py $(LOSSBENCH_ARGS)

# the fuzz campaign (issue 10): FUZZ_ARGS="--inproc-seconds 60 --udp-seconds 60" etc.
FUZZ_ARGS ?=
fuzz: venv
	$(VPY) bench/fuzz.py $(FUZZ_ARGS)

clean:
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -path ./$(VENV) -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -type d -print0 \
		| xargs -0 rm -rf
