# tenantguard — make targets. `make test` is what CI runs.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS  := -X main.version=$(VERSION) -X main.commit=$(COMMIT)
FUZZTIME ?= 30s
# Caps the minimization of each new input (FuzzAppendJSON stalls there otherwise).
FUZZMINIMIZE ?= 100x
PKGS     := ./...

.PHONY: all build test lint vet fuzz demo bench docker pgx-suite clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/tenantguard ./cmd/tenantguard

# vet + the whole suite under the race detector, integration tests included
# (they start their own throwaway PostgreSQL cluster).
test: vet
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) test -race -count=1 -timeout 30m $(PKGS)
	@# The relay and enforcement tests once more with the event loops off:
	@# every session on its own goroutines, as TLS sessions always are.
	TENANTGUARD_TEST_EVENT_LOOPS=-1 $(GO) test -race -count=1 -timeout 30m ./proxy/ ./proxy/guard/
	@# Every Go benchmark once (their own checks fail them; no timing is judged).
	$(GO) test -run '^$$' -bench . -benchtime 1x -count=1 -timeout 10m $(PKGS)

vet:
	$(GO) vet $(PKGS)

lint: vet
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi

# Runs every fuzz target for FUZZTIME each (FUZZMINIMIZE bounds input minimization).
fuzz:
	@set -e; for pkg in $$($(GO) list $(PKGS)); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) $$pkg; \
	  done; done

# A throwaway PostgreSQL with the clinic schema and tenantguard in front of it.
demo: build
	testdata/demo/demo.sh

# direct PostgreSQL vs PgBouncer vs tenantguard with pgbench, plus memory per
# idle connection and while streaming; sets up and tears down everything itself
# (testdata/bench/README.md). BENCH_DURATION=5 BENCH_PATIENTS=50000 for a quick run.
bench:
	testdata/bench/run.sh

# Go benchmarks of the rewriter and the relay.
.PHONY: bench-go
bench-go:
	$(GO) test -run '^$$' -bench . -benchmem $(PKGS)

# pgx's own test suite, run directly and through tenantguard, results compared
# (a few minutes; see proxy/testdata/pgx-suite.sh).
pgx-suite:
	proxy/testdata/pgx-suite.sh

docker:
	docker build --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) -t tenantguard:$(VERSION) .

clean:
	rm -rf bin
