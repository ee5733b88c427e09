# Bulkhead: `make run` shows it working, `make test` runs every test, `make bench` every benchmark.
SHELL := /bin/bash
CARGO ?= cargo
HOST_TRIPLE := x86_64-unknown-linux-gnu
# The guest image is cached outside the checkout so fresh clones on this machine reuse it.
IMAGE_DIR ?= $(HOME)/.cache/bulkhead/image
AGENT := target/$(HOST_TRIPLE)/release/bulkhead-agent
# The L2TP commands, static as the agent, for partitions that own a modem (docs/l2tp.md).
L2TP := target/$(HOST_TRIPLE)/release/bulkhead-l2tp
BULKHEAD := target/debug/bulkhead

export BULKHEAD_IMAGE_DIR := $(abspath $(IMAGE_DIR))
export BULKHEAD_BIN := $(abspath $(BULKHEAD))

.PHONY: all bootstrap python-tools build agent image run test lint bench fuzz clean

all: build

bootstrap:
	@scripts/bootstrap

# Python test tools (schemathesis) in a venv under ~/.cache/bulkhead.
python-tools: bootstrap
	@scripts/python-tools

build:
	$(CARGO) build --workspace --bins

# The agent runs as the guest's /init: a static binary (glibc, crt-static), no libc in the guest.
# bulkhead-l2tp is built the same way; the image carries it as /usr/sbin/bulkhead-l2tp
# (its hash is part of the image's cache key, so a changed binary rebuilds the image).
# bulkhead-tls-serve too, on its own (its features do not change the agent's): tests put it
# into an image of their own (the guest image has no TLS server).
agent:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release -p bulkhead-agent -p bulkhead-l2tp-share --bin bulkhead-agent --bin bulkhead-l2tp --target $(HOST_TRIPLE)
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release -p bulkhead-tls-serve --bin bulkhead-tls-serve --target $(HOST_TRIPLE)

image: bootstrap build agent
	$(BULKHEAD) image build --out $(IMAGE_DIR) --agent $(AGENT) --l2tp $(L2TP)
	$(BULKHEAD) image rootfs --prefetch

run: image
	scripts/demo

test: image python-tools
	$(CARGO) test --workspace --no-fail-fast

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: image
	@scripts/bootstrap --bench
	$(CARGO) build --release --workspace --bins
	bench/run-all

clean:
	$(CARGO) clean
