# decider — set-up and everyday commands. Every target creates the virtualenv it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PROTOS := $(wildcard proto/decider/v1/*.proto) proto/decider/agentgateway/ext_mcp.proto
PORT ?= 50051
DB ?= sqlite:///decider.db

.PHONY: venv run test lint proto proto-check bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,postgres]'
	touch $(STAMP)

venv: $(STAMP)

TOKENS ?= examples/tokens.yaml

## The service on the example bundle, with an embedded SQLite file and the example token file (its
## secrets are public: for a local try-out only), so approvals and the console work from the start.
run: $(STAMP)
	@echo "make run: tokens from $(TOKENS) -- EXAMPLE SECRETS, FOR LOCAL USE ONLY, never on a shared machine:"
	@grep -v '^#' $(TOKENS) | sed 's/^/    /'
	$(BIN)/decider serve --dev --bundle policies --db $(DB) --listen 127.0.0.1:$(PORT) --tokens $(TOKENS)

## Everything CI checks: lint, generated-code drift, the whole test suite (installs PostgreSQL and
## Debian's chromium for their tests when missing).
test: $(STAMP) lint proto-check
	@tools/scripts/ensure-postgres.sh
	@tools/scripts/ensure-chromium.sh
	$(BIN)/python -m pytest -q -ra

lint: $(STAMP)
	$(BIN)/ruff check --output-format concise decider tests tools

## Regenerate the gRPC/protobuf code from proto/ (commit the result).
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)

## Fail when the committed generated code differs from what proto/ generates.
proto-check: $(STAMP)
	@tmp=$$(mktemp -d) && \
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=$$tmp --pyi_out=$$tmp --grpc_python_out=$$tmp $(PROTOS) && \
	for f in $$(cd $$tmp && find . -name '*.py*' -type f); do \
	  cmp -s $$tmp/$$f $$f || { echo "generated code drifted: $$f (run 'make proto')"; rm -rf $$tmp; exit 1; }; \
	done; rm -rf $$tmp; echo "generated code is up to date"

BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): $(STAMP) tools/bench/requirements.txt
	$(BIN)/python -m pip install -q -r tools/bench/requirements.txt
	touch $(BENCH_STAMP)

## decider vs Cerbos 0.55 (installed from npm), unary and DecideStream, then the micro-benchmarks.
## Bounded: about 5 minutes (docs/performance.md). Tables on stdout, JSON in tools/bench/results/.
bench: $(BENCH_STAMP)
	$(BIN)/python tools/bench/compare.py --stream --batch --floor
	$(BIN)/python tools/bench/eval_bench.py
	$(BIN)/python tools/bench/writer_bench.py
	$(BIN)/python tools/bench/pipeline_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
