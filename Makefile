# Account Engagement — the two commands of the README are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
CARGO ?= cargo
ROLE ?= admin
FUNCTIONS := save-config query-api send-consent record-consent start-run download score

.PHONY: tools lambda-tools lambda-bench build test fmt-check clippy unit integration lint demo local token lambda bench clean-local

# Dev tools (moto server, cfn-lint), pinned in requirements-dev.txt, into .venv.
$(VENV)/.installed: requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

tools: $(VENV)/.installed

# cargo-lambda (with zig) for packaging the functions; not needed by the tests.
$(VENV)/.lambda-installed: $(VENV)/.installed requirements-lambda.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-lambda.txt
	touch $@

lambda-tools: $(VENV)/.lambda-installed

build:
	$(CARGO) build --workspace --bins

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

lint: tools
	$(VENV)/bin/cfn-lint template.yaml

# Unit and integration tests; the integration tests share one moto server started here.
unit integration: tools
	tools/local/with-moto.sh $(CARGO) test --workspace

test: tools fmt-check clippy lint
	tools/local/with-moto.sh $(CARGO) test --workspace

# The whole story on the synthetic tenant, then exit.
demo: tools lambda-tools
	$(CARGO) build --release -p local-stack
	./target/release/local-stack demo

# The stack left running: API on http://127.0.0.1:$${PORT:-3000}.
local: tools
	$(CARGO) build --release -p local-stack
	./target/release/local-stack serve

token:
	@$(CARGO) run --quiet --release -p local-stack -- token $(ROLE)

# Lambda binaries (cargo-lambda from .venv; uses zig through the ziglang wheel).
lambda: lambda-tools
	PATH="$(abspath $(VENV))/bin:$$PATH" cargo lambda build --release --x86-64 $(foreach f,$(FUNCTIONS),-p $(f))

# Binary sizes and init-to-ready time of the Lambda binaries (after make lambda).
lambda-bench: lambda
	python3 tools/bench/init_time.py target/lambda 7

# Score throughput and memory, and download wall time against the ideal (see README).
bench: tools
	$(CARGO) run --release -p shared --example score_bench
	tools/local/with-moto.sh $(CARGO) run --release -p local-stack --example download_bench
