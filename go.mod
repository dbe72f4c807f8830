module github.com/portlife/portlife

go 1.26.8

require (
	github.com/cilium/ebpf v0.22.0
	github.com/leodido/go-syslog/v4 v4.6.0
	github.com/spf13/pflag v1.1.0
	go.uber.org/goleak v1.3.0
	go.uber.org/zap v1.28.0
	golang.org/x/sys v0.50.0
)

require go.uber.org/multierr v1.10.0 // indirect

tool github.com/cilium/ebpf/cmd/bpf2go
