package tracer

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// Errors a user can act on. The message says what to do.
var (
	ErrPermission = errors.New("portlife needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN: run it with sudo")
	ErrNoBTF      = errors.New("this kernel has no BTF at /sys/kernel/btf/vmlinux: portlife needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")
	ErrOldKernel  = errors.New("this kernel lacks a feature portlife needs: run it on Linux 5.10 or later")
	// The syscall tracepoints come with CONFIG_FTRACE_SYSCALLS, which some
	// kernels leave out; only connect_failed and bind_failed need them.
	ErrNoSyscallTracepoints = errors.New("this kernel has no syscall tracepoints (CONFIG_FTRACE_SYSCALLS): " +
		"leave connect_failed and bind_failed out of --events")
)

const btfPath = "/sys/kernel/btf/vmlinux"

// checkKernel fails early, before anything is loaded, for the common cases.
func checkKernel() error {
	if !hasCapabilities() {
		return ErrPermission
	}
	if _, err := os.Stat(btfPath); err != nil {
		return ErrNoBTF
	}
	kernel, err := btf.LoadKernelSpec()
	if err != nil {
		return fmt.Errorf("%w (%v)", ErrNoBTF, err)
	}
	for _, tp := range requiredTracepoints {
		if _, err := kernel.AnyTypeByName("btf_trace_" + tp); err != nil {
			return fmt.Errorf("%w: it has no tracepoint %s", ErrOldKernel, tp)
		}
	}
	return nil
}

// requiredTracepoints are the BTF tracepoints portlife cannot do without;
// Linux 5.10 has them all. (sock_send_length and sock_recv_length, from
// 6.3, are used where they exist: features.go.)
var requiredTracepoints = []string{
	"inet_sock_set_state", "tcp_send_reset", "tcp_receive_reset", "tcp_destroy_sock",
}

// hasCapabilities reports whether this process may load and attach tracing
// programs: CAP_SYS_ADMIN, or CAP_BPF with CAP_PERFMON and CAP_NET_ADMIN.
func hasCapabilities() bool {
	has := effectiveCapabilities()
	return has(unix.CAP_SYS_ADMIN) || has(unix.CAP_BPF) && has(unix.CAP_PERFMON) && has(unix.CAP_NET_ADMIN)
}

// effectiveCapabilities reports which capabilities this process has. If
// /proc does not say, root is taken to have them all.
func effectiveCapabilities() func(int) bool {
	all := func(int) bool { return os.Geteuid() == 0 }
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return all
	}
	for _, line := range strings.Split(string(b), "\n") {
		hex, ok := strings.CutPrefix(line, "CapEff:")
		if !ok {
			continue
		}
		caps, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
		if err != nil {
			return all
		}
		return func(c int) bool { return caps&(1<<c) != 0 }
	}
	return all
}

// capabilityCost is a capability portlife uses beyond those it needs to run
// at all, and what running without it costs.
type capabilityCost struct {
	name string
	cost string
}

// missingCapabilities lists the capabilities portlife would use with cfg
// but lacks, and what each costs.
func missingCapabilities(cfg *Config) []capabilityCost {
	has := effectiveCapabilities()
	var out []capabilityCost
	if !has(unix.CAP_SYS_ADMIN) {
		out = append(out, capabilityCost{"CAP_SYS_ADMIN",
			"entering other network namespaces (setns), and mounting cgroup v2 where none is: sockets that existed at start in other namespaces are not adopted, and their ends are not reported (counted as not_adopted)"})
	}
	if !has(unix.CAP_SYS_PTRACE) {
		out = append(out, capabilityCost{"CAP_SYS_PTRACE",
			"finding the network namespaces of other users' processes (/proc/PID/ns/net), and of sockets held from outside their namespace (pidfd_getfd): sockets that existed at start there are not adopted (counted as not_adopted)"})
	}
	if !has(unix.CAP_DAC_READ_SEARCH) {
		out = append(out, capabilityCost{"CAP_DAC_READ_SEARCH",
			"opening cgroups by their id (open_by_handle_at) to name their unit or container: events carry no unit or container_id (counted as unnamed cgroups)"})
	}
	if cfg.ReaderNice < 0 && !has(unix.CAP_SYS_NICE) {
		out = append(out, capabilityCost{"CAP_SYS_NICE",
			"raising the reader's priority (--reader-nice): on a CPU-saturated host the reader can fall behind, and the kernel then drops events (counted as ringbuf_full)"})
	}
	return out
}

// explain turns the kernel's refusals into the errors above, keeping the
// detail behind them.
func explain(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ebpf.ErrNotSupported):
		return fmt.Errorf("%w (%v)", ErrOldKernel, err)
	case errors.Is(err, os.ErrPermission):
		return fmt.Errorf("%w (%v)", ErrPermission, err)
	}
	return err
}
