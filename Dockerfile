# portlife in a container: a static binary (pure Go, SQLite included, the
# eBPF objects embedded) on distroless's static base, which has no shell,
# no libc and no package manager. Build: docker build -t portlife .
# Run it with deploy/kubernetes/daemonset.yaml, or:
#   docker run --rm --pid=host --cap-add BPF --cap-add PERFMON --cap-add NET_ADMIN \
#     --cap-add SYS_ADMIN --cap-add SYS_PTRACE --security-opt seccomp=unconfined \
#     -v /sys/fs/cgroup:/sys/fs/cgroup:ro -v /sys/kernel/tracing:/sys/kernel/tracing:ro \
#     -v /var/lib/portlife:/var/lib/portlife portlife trace --store /var/lib/portlife/history.db
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# CGO_ENABLED=0: no libc to link; -trimpath: no build paths in the binary.
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags='-s -w' -o /out/portlife ./cmd/portlife

FROM gcr.io/distroless/static-debian12
COPY --from=build /out/portlife /usr/bin/portlife
ENTRYPOINT ["/usr/bin/portlife"]
CMD ["trace", "--output", "json", "--log-format", "json"]
