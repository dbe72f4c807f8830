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

.PHONY: build run test generate check-generated bench bench-go clean

build:
	$(GO) build -o $(BIN) ./cmd/portlife

run: build
	./$(BIN) --output text $(ARGS)

# -p 1: the kernel tests share one kernel; running packages at once would
# only make them slower, not wrong, but their numbers noisier.
test:
	$(GO) vet ./...
	$(GO) test -count=1 -p 1 ./...

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
# then in-kernel BPF time with it on. For a quick look:
#   make bench BENCH_ARGS='--runs 1 --duration 5s --configs tcp-w4' BENCH_BPF_ARGS='--runs 1 --duration 5s --configs tcp-w4'
BENCH_ARGS     ?= --runs 3 --duration 10s --configs all
BENCH_BPF_ARGS ?= --runs 2 --duration 6s --configs tcp-w4,tcp-w32,udp-w4
BENCH          = ./bin/bench --portlife ./$(BIN) --churn ./bin/churn --tcplife $(TCPLIFE)

bench: build
	@[ -x $(TCPLIFE) ] || { echo "installing libbpf-tools"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libbpf-tools >/dev/null; }
	$(GO) build -o bin/churn ./bench/churn
	$(GO) build -o bin/bench ./bench/runner
	$(BENCH) --bpf-stats=false --json bin/bench-rates.json $(BENCH_ARGS)
	$(BENCH) --json bin/bench-bpf.json $(BENCH_BPF_ARGS)
	$(MAKE) bench-go

bench-go:
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./output ./tracer

clean:
	rm -rf bin
