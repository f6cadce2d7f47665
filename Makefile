# make run   set up everything and start the five processes (Ctrl-C stops them); private
#            Postgres, Redis and RabbitMQ under .local-stores/ for those that do not answer at
#            their default URLs
# make check ruff (ruff.toml) and the unit tests, which need no stores; under a minute
# make test  set up everything and run the whole test suite
# make bench the system against its anchors (bench/README.md); 13-16 minutes
# make chaos-cluster  Redis Cluster masters killed and restarted under load; about 1.5 minutes
# make certs development certificates for mutual TLS between the services (docs/security.md),
#            and the compose stack's API tokens
# make lock  uv.lock resolved anew from the pyproject.toml files, and the hashed locks/ exported
#            from it (docs/packaging.md)

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
# The images built from the root Dockerfile (SERVICE=<image>): each has its lock.
IMAGES := gateway cache-svc persistence-svc workers

.PHONY: run check test chaos chaos-cluster bench venv lock stubs db preflight certs clean

# Where `make run` keeps the data and logs of the private stores it starts.
LOCAL_STORES := .local-stores

# chinook.local_stores starts a private store, from the installed server binaries, for each
# store that does not answer at its default URL (an explicit URL that does not answer stops
# it with a hint), runs the database step and honcho, and stops the stores after them
# (docs/local-stores.md). .env applies to all of it, as honcho applies it to the processes.
run: venv stubs
	$(BIN)/python -m chinook.local_stores --folder $(LOCAL_STORES) --env-file .env -- \
		sh -c '$(BIN)/python -m persistence_svc.initdb && exec honcho start --procfile Procfile'

# The quick loop before a commit: lint, then the pure-logic tests.
check: venv
	$(BIN)/ruff check .
	$(BIN)/pytest tests/unit -q

test: venv
	$(BIN)/pytest -m "not slow"

# Every fault-injection scenario with its summary table, and the other guarantees' tests.
chaos: venv
	$(BIN)/pytest -v tests/chaos tests/integration/test_write_back_properties.py \
		tests/e2e/test_dead_letters_and_metrics.py tests/e2e/test_write_back_limits.py

# Faults on a private Redis Cluster (3 masters, 3 replicas) under two cache-svc and two
# gateways: a master SIGKILLed mid-flush with and without WRITEBACK_MIN_REPLICAS, a
# cache-svc and a gateway SIGKILLed mid-bulk, a master restart and a rolling restart;
# ends with a table of rows checked, acknowledged writes lost and time to recover.
chaos-cluster: venv
	$(BIN)/pytest -v tests/chaos_cluster

# The fuzzers of `make test` with many more generated inputs: schemathesis against the
# HTTP API (tests/e2e/test_fuzz_http_api.py, as a reader, a writer and an admin;
# FUZZ_EXAMPLES per operation and role) and hypothesis against every RPC of both gRPC
# services (tests/e2e/test_grpc_fuzz.py; GRPC_FUZZ_EXAMPLES per RPC). About 20 minutes.
.PHONY: fuzz
FUZZ_EXAMPLES ?= 1000
GRPC_FUZZ_EXAMPLES ?= 1000
fuzz: venv
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) GRPC_FUZZ_EXAMPLES=$(GRPC_FUZZ_EXAMPLES) \
		$(BIN)/pytest tests/e2e/test_fuzz_http_api.py tests/e2e/test_grpc_fuzz.py

# Scenarios B1-B5 against the floor and the monolith anchors, in one run, then B6 (a Redis
# Cluster, WAIT and a second cache-svc against one Redis): prints the table, writes
# bench/results/<timestamp>.json and .png, and bench/latest.png.
bench: venv preflight
	$(BIN)/python -m bench --plot bench/latest.png

venv: $(VENV)/.installed

# Made anew whenever a lock changes, so that nothing a lock dropped stays behind. The
# dependencies come from the hashed dev lock; then every project of this repository,
# editable, built by the locked hatchling (no build isolation, so nothing unlocked is
# fetched). Hatchling's editable install is a .pth naming each project's folder, which
# editors and type checkers follow as well as Python does.
$(VENV)/.installed: locks/dev.txt locks/projects.txt
	@echo "Setting up $(VENV) with $(PYTHON)"
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --progress-bar off --require-hashes -r locks/dev.txt
	$(BIN)/pip install --quiet --progress-bar off --no-deps --no-build-isolation -r locks/projects.txt
	touch $@

# Resolves uv.lock anew from the pyproject.toml files (the root one and its workspace
# members), then exports from it, with hashes: one lock per image, the development lock
# (everything), the images' build stage lock, the development images' extra, the lint
# jobs' lock, and the list of projects to install editable. All come from one
# resolution, so they agree.
EXPORT := $(BIN)/uv export --quiet --frozen --no-emit-workspace
lock: venv
	$(BIN)/uv lock
	$(foreach image,$(IMAGES),$(EXPORT) --package chinook-$(image) --output-file locks/$(image).txt &&) true
	$(EXPORT) --all-packages --group dev --output-file locks/dev.txt
	$(EXPORT) --only-group build --output-file locks/build.txt
	$(EXPORT) --only-group lint --output-file locks/lint.txt
	$(EXPORT) --only-group live-reload --output-file locks/live-reload.txt
	$(BIN)/uv export --quiet --frozen --all-packages --no-hashes --no-header --no-annotate | grep '^-e ' > locks/projects.txt

# Regenerates the gRPC stubs from protos/; a test fails when they are stale.
stubs: venv
	$(BIN)/python protos/generate.py

preflight: venv
	$(BIN)/python -m chinook.preflight

# Creates and loads the database named in DATABASE_URL if it does not exist.
db: venv
	$(BIN)/python -m persistence_svc.initdb

# A development CA (kept if .certs/ holds one; RENEW_CA=1 makes a new one) and new leaves:
# .certs/<service>/ for docker compose, and for `make run` and the tests with
# GRPC_TLS_DIR=.certs; .certs/dev.pem, of no service, for grpcurl list; and, once, the
# compose gateway's API tokens (.certs/api-tokens.txt).
certs: venv
	$(BIN)/python -m deploy.dev_certs $(if $(RENEW_CA),--renew-ca)
	$(BIN)/python -m deploy.dev_tokens

clean:
	rm -rf $(VENV) .pytest_cache
