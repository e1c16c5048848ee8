# itsur developer tasks (GNU make). Every recipe works from a fresh clone:
# the services it needs (Postgres, Redis) are found or started by
# scripts/services.sh (see `make services`).
#
#   make run                  build, start services, seed demo data once, run `itsur all`
#                             on BIND_ADDR (default 127.0.0.1:8080)
#   make test [TEST_ARGS=..]  cargo test against the dev services, then the browser suite and
#                             schemathesis (BROWSER_TESTS=0 / SCHEMATHESIS=0 skip them)
#   make lint                 fmt check, clippy -D warnings, layer rules, no libpq/OpenSSL/aws-lc
#   make static               statically linked, stripped release binary
#   make deb                  Debian package (cargo-deb) around the static binary

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.ONESHELL:
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

CARGO ?= cargo
# Extra arguments for `cargo test`, e.g. TEST_ARGS='--test it -- --nocapture'.
TEST_ARGS ?=
# 0: `make test` skips the browser suite (tests/browser/run.sh).
BROWSER_TESTS ?= 1
# 0: `make test` skips schemathesis over /openapi.json (scripts/schemathesis.sh).
SCHEMATHESIS ?= 1
STATIC_TARGET := x86_64-unknown-linux-gnu
# Where cargo writes its output: CARGO_TARGET_DIR or build.target-dir when set, else
# target/ (asked from cargo once, when a recipe needs it).
TARGET_DIR = $(eval TARGET_DIR := $(or $(shell $(CARGO) metadata --format-version 1 --no-deps 2>/dev/null \
    | sed -nE 's/.*"target_directory":"([^"]*)".*/\1/p'),$(or $(CARGO_TARGET_DIR),$(CURDIR)/target)))$(TARGET_DIR)
STATIC_BIN = $(TARGET_DIR)/$(STATIC_TARGET)/release/itsur
# getrandom 0.3/0.4 find the getrandom(2) wrapper through dlsym, which a static glibc binary
# cannot do, and would fall back to reading /dev/urandom — absent from a scratch image
# without /dev (packaging/tests/image.sh found it). Use the system call directly.
STATIC_RUSTFLAGS := -C target-feature=+crt-static --cfg getrandom_backend="linux_getrandom"
DEV_BIN = $(TARGET_DIR)/debug/itsur
# Address of `make run` (the same BIND_ADDR the binary reads): `make run BIND_ADDR=0.0.0.0:9000`
# or BIND_ADDR in the environment.
BIND_ADDR ?= 127.0.0.1:8080

.PHONY: help build run test test-browser test-schemathesis test-packaging bench lint settings-table check-layers check-no-c-deps fmt static deb \
        services services-stop clean-local

help: ## list the targets
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /  \1\t/' | expand -t 20

build: ## cargo build --locked (debug)
	$(CARGO) build --locked

run: build ## start services, seed demo data if empty, run `itsur all` on BIND_ADDR (127.0.0.1:8080)
	@env_lines="$$(scripts/services.sh env)"
	eval "$$env_lines"
	export ITSUR_ENV=dev BIND_ADDR='$(BIND_ADDR)'
	export JWT_SECRET="$${JWT_SECRET:-dev-only-secret-change-me-please-0123456789}"
	if $(DEV_BIN) seed --help >/dev/null 2>&1; then
	  psql="$$(command -v psql || ls -1 /usr/lib/postgresql/*/bin/psql 2>/dev/null | sort -V | tail -n 1 || true)"
	  if [[ -z $$psql ]]; then
	    echo "run: psql not found; not checking for demo data (seed by hand: $(DEV_BIN) seed --demo)" >&2
	  else
	    campuses="$$("$$psql" -X -w "$$DATABASE_URL" -tAc 'select count(*) from campuses' 2>/dev/null || true)"
	    if [[ -z $$campuses || $$campuses == 0 ]]; then
	      echo "run: empty database, seeding demo data" >&2
	      $(DEV_BIN) migrate
	      $(DEV_BIN) seed --demo
	    fi
	  fi
	fi
	# URLs without their passwords (scheme://user:secret@host -> scheme://user:***@host).
	redact() { sed -E 's#^([a-z][a-z0-9+.-]*://[^/@:]*):[^/@]*@#\1:***@#' <<<"$$1"; }
	echo "run: itsur all on http://$$BIND_ADDR (DATABASE_URL=$$(redact "$$DATABASE_URL") REDIS_URL=$$(redact "$${REDIS_URL:-}"))" >&2
	exec $(DEV_BIN) all

test: ## cargo test --all-targets, then the browser suite and schemathesis (BROWSER_TESTS=0, SCHEMATHESIS=0 skip them); extra cargo args in TEST_ARGS
	@env_lines="$$(scripts/services.sh env)"
	eval "$$env_lines"
	export TEST_DATABASE_URL TEST_REDIS_URL
	set -x
	$(CARGO) test --locked --all-targets $(TEST_ARGS)
	if [[ "$(BROWSER_TESTS)" != 0 ]]; then ITSUR_BIN="$(DEV_BIN)" tests/browser/run.sh; fi
	if [[ "$(SCHEMATHESIS)" != 0 ]]; then ITSUR_BIN="$(DEV_BIN)" scripts/schemathesis.sh; else echo "SKIP schemathesis: SCHEMATHESIS=0"; fi

test-schemathesis: ## only schemathesis over /openapi.json for student, vendor staff and admin (scripts/schemathesis.sh)
	@env_lines="$$(scripts/services.sh env)"
	eval "$$env_lines"
	export TEST_DATABASE_URL TEST_REDIS_URL
	$(CARGO) build --locked --bin itsur
	ITSUR_BIN="$(DEV_BIN)" scripts/schemathesis.sh

test-browser: ## only the browser suite (Chromium + playwright-core): tests/browser/run.sh [FILES=...]
	@env_lines="$$(scripts/services.sh env)"
	eval "$$env_lines"
	export TEST_DATABASE_URL TEST_REDIS_URL
	$(CARGO) build --locked --bin itsur
	ITSUR_BIN="$(DEV_BIN)" tests/browser/run.sh $(FILES)

test-packaging: build ## systemd/nginx/TLS/client-ip/Makefile/compose/prometheus/debian/k8s checks and the rolling restart
	ITSUR_BIN='$(DEV_BIN)' packaging/tests/run-all.sh

bench: ## release build, fresh seeded databases, every scenario (or SCENARIO=orders|menu|jobs|jobs-pickup|jobs-sleep|jobs-churn|jobs-xmin|realtime|sockets|report-isolation|console|flows|relay|logins); figures in bench/results/
	@env_lines="$$(scripts/services.sh env)"
	eval "$$env_lines"
	export BENCH_DATABASE_URL="$$TEST_DATABASE_URL" BENCH_REDIS_URL="$$TEST_REDIS_URL"
	$(CARGO) bench --locked --bench load -- $(SCENARIO)

lint: ## fmt --check, clippy -D warnings, layer rules, README settings table current, no libpq/OpenSSL/aws-lc
	@set -x
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	scripts/check-layers.sh
	scripts/settings-table.sh --check
	$(MAKE) --no-print-directory check-no-c-deps

settings-table: ## regenerate README.md's settings table from the clap definitions (itsur settings)
	scripts/settings-table.sh

check-layers: ## grep the layering rules of src/
	@scripts/check-layers.sh

# No C library in the tree besides ring (rustls' crypto provider): diesel talks to Postgres
# through diesel-async/tokio-postgres, never libpq (pq-sys); TLS is rustls+ring, never OpenSSL
# (openssl-sys) or a second provider (aws-lc-rs/aws-lc-sys). Keeps the binary static.
FORBIDDEN_CRATES := pq-sys openssl-sys aws-lc-rs aws-lc-sys

check-no-c-deps:
	@err="$$(mktemp)"
	trap 'rm -f "$$err"' EXIT
	for crate in $(FORBIDDEN_CRATES); do
	  if out="$$($(CARGO) tree --locked --target all -i "$$crate" 2>"$$err")"; then
	    if [[ -n $$out ]]; then
	      printf 'error: %s is in the dependency tree:\n%s\n' "$$crate" "$$out" >&2
	      exit 1
	    fi
	  elif ! grep -q 'did not match any packages' "$$err"; then
	    cat "$$err" >&2
	    echo "error: cargo tree -i $$crate failed" >&2
	    exit 1
	  fi
	done
	echo "none of $(FORBIDDEN_CRATES) in the dependency tree"

fmt: ## cargo fmt --all
	$(CARGO) fmt --all

static: ## statically linked (crt-static), stripped release binary; checked with ldd
	@set -x
	RUSTFLAGS='$(STATIC_RUSTFLAGS)' $(CARGO) build --locked --release --target $(STATIC_TARGET)
	strip $(STATIC_BIN)
	{ set +x; } 2>/dev/null
	echo "$(STATIC_BIN): $$(du -h $(STATIC_BIN) | cut -f1) ($$(stat -c %s $(STATIC_BIN)) bytes)"
	deps="$$(ldd $(STATIC_BIN) 2>&1 || true)"
	echo "ldd: $$deps"
	if ! grep -qE 'not a dynamic executable|statically linked' <<<"$$deps"; then
	  echo "error: $(STATIC_BIN) is not statically linked" >&2
	  exit 1
	fi

deb: static ## Debian package (cargo-deb, installed into .local/tools when missing) around `make static`
	@cargo_deb="$$(scripts/cargo-tool.sh cargo-deb)"
	set -x
	"$$cargo_deb" --no-build --no-strip --target $(STATIC_TARGET)
	{ set +x; } 2>/dev/null
	deb="$$(ls -t '$(TARGET_DIR)/$(STATIC_TARGET)/debian/'itsur_*.deb | head -n 1)"
	echo "$$deb: $$(du -h "$$deb" | cut -f1)"
	dpkg-deb --info "$$deb"

services: ## make sure Postgres and Redis answer; print their export lines
	@scripts/services.sh env

services-stop: ## stop the project-local Postgres and Redis (.local/)
	@scripts/services.sh stop

clean-local: services-stop ## stop the project-local services and delete .local/
	rm -rf .local
