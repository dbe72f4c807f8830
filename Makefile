# portlife. `make run` traces with text output (as root); `make test` runs
# every test, the kernel ones included (as root).
GO       ?= go
BIN      := bin/portlife
ARGS     ?=
TCPLIFE  ?= /usr/sbin/tcplife
# The eBPF objects are committed; regenerating needs clang, llvm and
# libbpf-dev, which `make generate` installs from Debian's packages.
BPF_DEPS := clang llvm-strip
BPF_PKGS := clang llvm libbpf-dev

.PHONY: build run test deps cross test-kernels generate check-generated bench bench-go bench-store soak baseline clean

# -buildvcs=auto stamps the commit into `portlife version`, even where
# GOFLAGS turns VCS stamping off.
build:
	$(GO) build -buildvcs=auto -o $(BIN) ./cmd/portlife

run: build
	./$(BIN) --output text $(ARGS)

# -p 1: the kernel tests share one kernel; running packages at once would
# only make them slower, not wrong, but their numbers noisier. -race: the
# stream, the tracer's counters and the loss reporter are read across
# goroutines; every package fits in CI's time with it (about 90 s).
# The kernel tests run twice: on this kernel's best hooks, then with every
# stand-in that older kernels need forced (tracer/features.go).
# deploy/ is a module of its own, so that the Kubernetes API types its test
# decodes the manifests into stay out of portlife's go.mod: ./... does not
# reach it, and it is run from its directory.
test: deps
	$(GO) vet ./...
	$(GO) test -race -count=1 -p 1 ./...
	PORTLIFE_TEST_FALLBACKS=all $(GO) test -race -count=1 ./tracer
	cd deploy && $(GO) vet ./... && $(GO) test -race -count=1 ./...

# What the tests run besides Go: promtool lints /metrics (Debian's
# prometheus package), portlife top is driven in a real terminal in tmux,
# rsyslogd receives the syslog sinks (cmd/portlife/sinks_e2e_test.go), and
# ss aborts a sink's connection (internal/sink). Quick when they are
# installed already.
TEST_DEPS := promtool tmux rsyslogd ss
TEST_PKGS := prometheus tmux rsyslog iproute2
# The OTLP sink's test runs an OpenTelemetry Collector built from the
# official modules in test/otelcol (a module of its own). It is built once
# per version of its sources, into the cache the test looks in (the first
# build takes minutes; CI should keep ~/.cache and Go's build cache).
OTELCOL := $${XDG_CACHE_HOME:-$$HOME/.cache}/portlife/otelcol-$$(cat test/otelcol/go.mod test/otelcol/go.sum test/otelcol/main.go | sha256sum | cut -c1-16)
deps:
	@for t in $(TEST_DEPS); do command -v $$t >/dev/null || [ -x /usr/sbin/$$t ] || missing=1; done; \
	 if [ -n "$$missing" ]; then \
	   echo "installing $(TEST_PKGS)"; \
	   apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(TEST_PKGS) >/dev/null; \
	 fi
	@bin=$(OTELCOL); [ -x "$$bin" ] || { echo "building the test collector into $$bin"; \
	   cd test/otelcol && $(GO) build -mod=mod -o "$$bin.tmp" . && mv "$$bin.tmp" "$$bin"; }

# The same committed eBPF objects (bpf2go's bpfel) serve arm64: the binary
# and every test must build for it.
cross:
	GOARCH=arm64 $(GO) build ./...
	GOARCH=arm64 $(GO) vet ./...

# The kernel tests (./tracer, ./cmd/portlife) inside other kernels, under
# qemu without KVM: 5.10, 6.1, 6.12, 6.18 and the newest 7.x, or
# KERNELS="6.1 7" for some. Kernels come from Debian's archive through apt
# and are cached in ~/.cache/portlife-kernels; each console's log and the
# table go to bin/kernels/. KERNELS_ARCH=arm64 boots arm64 kernels;
# KERNELS_ARGS passes more flags (go run ./test/kernels -h lists them).
# docs/kernels.md has the details.
KERNELS      ?=
KERNELS_ARCH ?= amd64
KERNELS_ARGS ?=
test-kernels:
	$(GO) run ./test/kernels --arch $(KERNELS_ARCH) $(if $(KERNELS),--kernels "$(KERNELS)") $(KERNELS_ARGS)

generate:
	@for t in $(BPF_DEPS); do command -v $$t >/dev/null || missing=1; done; \
	 [ -f /usr/include/bpf/bpf_helpers.h ] || missing=1; \
	 if [ -n "$$missing" ]; then \
	   echo "installing $(BPF_PKGS)"; \
	   apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BPF_PKGS) >/dev/null; \
	 fi
	$(GO) generate ./tracer

# The committed bpf2go outputs must be what their sources generate.
check-generated: generate
	@git diff --exit-code -- tracer/ || { echo "generated files are not up to date: run make generate and commit"; exit 1; }

# Needs root; installs libbpf-tools for tcplife. Two passes: rates, CPU,
# memory and completeness with bpf_stats off (it slows every program run),
# then in-kernel BPF time with it on. Both interleave no tracer, portlife,
# portlife with --summary, with --metrics-addr, with a file sink, a syslog
# and a TCP sink (to receivers the runner runs on loopback), with --store,
# and tcplife. Besides the churn configurations, the data path (tcp-rr4,
# udp-rr4: 4 persistent connections doing 64-byte round trips, no churn)
# runs under none, portlife and tcplife: its rate vs none, and in the second
# pass the BPF time and program runs per round trip. Then bench-go (0
# allocations per event in the encoders and sinks) and bench-store (rows/s,
# bytes per lifetime, --port over 10M rows).
# About an hour (the data path is about 6 minutes of it). For a quick look:
#   make bench BENCH_ARGS='--runs 1 --duration 5s --configs tcp-w4' BENCH_BPF_ARGS='--runs 1 --duration 5s --configs tcp-w4'
# To compare a change with an older portlife, in one interleaved run:
#   make bench BASELINE=main
# builds that git revision into bin/portlife-baseline and runs it as the
# tracer portlife-baseline, right after portlife, in both passes.
BENCH_ARGS     ?= --runs 3 --duration 10s --configs all
BENCH_BPF_ARGS ?= --runs 2 --duration 6s --configs tcp-w4,tcp-w32,udp-w4,tcp-rr4,udp-rr4
BASELINE       ?=
BASELINE_BIN   := bin/portlife-baseline
BENCH          = ./bin/bench --portlife ./$(BIN) --churn ./bin/churn --tcplife $(TCPLIFE)$(if $(BASELINE), --portlife-baseline ./$(BASELINE_BIN))

bench: build $(if $(BASELINE),baseline)
	@[ -x $(TCPLIFE) ] || { echo "installing libbpf-tools"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libbpf-tools >/dev/null; }
	$(GO) build -o bin/churn ./bench/churn
	$(GO) build -o bin/bench ./bench/runner
	$(BENCH) --bpf-stats=false --json bin/bench-rates.json $(BENCH_ARGS)
	$(BENCH) --json bin/bench-bpf.json $(BENCH_BPF_ARGS)
	$(MAKE) bench-go
	$(MAKE) bench-store

# The store: rows per second through the writer, bytes per lifetime on disk,
# and `query --port P --at T` over 10 million rows (built once, kept in
# bin/bench-10m.db for the next run: a few minutes the first time).
bench-store:
	@mkdir -p bin
	PORTLIFE_BENCH_DB=$(CURDIR)/bin/bench-10m.db $(GO) test -run '^$$' -bench . -benchtime 3s -count 3 ./internal/store

# Not in CI: SOAK_MINUTES (60) at a paced SOAK_RATE (5,000) connections/s
# with the store and a file output on; prints RSS, heap, threads, fds, the
# store's size and lost events each minute, and fails if RSS, threads or
# fds grow after the warm-up. Needs root and a quiet machine.
SOAK_MINUTES ?= 60
SOAK_RATE    ?= 5000
soak: build
	$(GO) build -o bin/churn ./bench/churn
	$(GO) run ./test/soak --minutes $(SOAK_MINUTES) --rate $(SOAK_RATE) --portlife ./$(BIN) --churn ./bin/churn

bench-go:
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./internal/encode ./internal/stream ./internal/summary ./internal/metrics ./internal/sink ./internal/ports ./tracer

# BASELINE's committed tree, built outside the work tree, which stays as it is.
baseline:
	@[ -n "$(BASELINE)" ] || { echo "usage: make baseline BASELINE=<git rev>"; exit 1; }
	@rev=$$(git rev-parse --verify --quiet '$(BASELINE)^{commit}') || { echo "BASELINE=$(BASELINE) is not a git revision"; exit 1; }; \
	 tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	 echo "building $(BASELINE_BIN) from $(BASELINE) ($$rev)" && \
	 git archive $$rev | tar -x -C "$$tmp" && \
	 cd "$$tmp" && $(GO) build -o '$(CURDIR)/$(BASELINE_BIN)' ./cmd/portlife

clean:
	rm -rf bin
