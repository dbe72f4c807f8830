package tracer

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// kernelFeatures is what this kernel lets portlife use, found by probing the
// kernel at start, never by reading its version: distributions backport.
// Each missing feature has a fallback, and a cost that the start-up line
// names.
type kernelFeatures struct {
	// gaps are the kernel side's fallbacks (enum kernel_gap), which the
	// verifier prunes to the path this kernel takes.
	gaps portlifeKernelGap
	// udpFexit: fexit programs attach to UDP's send and receive functions
	// (udp_sendmsg, udpv6_sendmsg, udp_recvmsg, udpv6_recvmsg). Where they
	// do, they count datagrams in place of the datagram tracepoints, which
	// run a program for every send and receive on the host, TCP included.
	// Distribution kernels have them; a kernel built without ftrace's
	// trampolines does not.
	udpFexit bool
	// recvArgs: how many arguments udp_recvmsg takes here (6 before Linux
	// 5.19, 5 before 6.18, 4 since), so where its fexit programs find
	// flags and the return.
	recvArgs uint8
	// noFexit is why udpFexit is false, where it was probed.
	noFexit string
}

// datagramHooks: something counts UDP datagrams and shows a connected UDP
// socket's peer as it sends: the fexit programs on UDP's functions, or
// the sock:sock_send_length and sock:sock_recv_length tracepoints (Linux
// 6.3).
func (f kernelFeatures) datagramHooks() bool { return f.gaps&portlifeKernelGapGAP_DATAGRAM_HOOKS == 0 }

// datagramTracepoints: the tracepoints count datagrams, where the fexit
// programs cannot.
func (f kernelFeatures) datagramTracepoints() bool { return f.datagramHooks() && !f.udpFexit }

// fallback is one feature a kernel may lack, what portlife does without it,
// and what that costs the user.
type fallback struct {
	name string // the missing feature, as the start-up line names it
	cost string // what the fallback gives up
}

// missing lists the fallbacks this kernel needs, for the start-up line.
func (f kernelFeatures) missing() []fallback {
	var out []fallback
	if f.gaps&portlifeKernelGapGAP_SK_STORAGE != 0 {
		out = append(out, fallback{"socket storage in tracing programs (Linux 5.11)",
			"sockets are tracked in a table of --max-sockets entries, and the children of two listeners on one port are named after the newer one"})
	}
	if f.gaps&portlifeKernelGapGAP_SOCKET_COOKIE != 0 {
		out = append(out, fallback{"socket cookies in tracing programs (Linux 5.12)",
			"TCP sockets get the kernel's cookie from cgroup/sock_create and sockops programs, and those from before start from a sock_diag listing; one they all missed (made by the kernel itself, or before start and in no table yet) is named by its kernel address: unique among the sockets alive, not forever"})
	}
	if f.gaps&portlifeKernelGapGAP_TASK_STORAGE != 0 {
		out = append(out, fallback{"task storage in tracepoint programs (Linux 5.11)",
			"connect() and bind() calls in flight are tracked in a table by thread id"})
	}
	if f.gaps&portlifeKernelGapGAP_SOCK_FROM_FILE != 0 {
		out = append(out, fallback{"bpf_sock_from_file (Linux 5.11)",
			"none: sockets that existed at start are found by their inode type"})
	}
	if f.datagramTracepoints() {
		out = append(out, fallback{"fexit programs on udp_sendmsg and udp_recvmsg (" + f.noFexit + ")",
			"UDP datagrams are counted by the sock_send_length and sock_recv_length tracepoints, which run a program for every send and receive on the host, TCP's included (tens of nanoseconds each)"})
	}
	if !f.datagramHooks() {
		out = append(out, fallback{"fexit programs on udp_sendmsg and udp_recvmsg with socket storage (Linux 5.12), and the sock_send_length and sock_recv_length tracepoints (Linux 6.3)",
			"UDP events carry no datagram or byte counts; a connected UDP socket's open comes from connect()'s return (with the syscall tracepoints; without them, its close alone)"})
	}
	return out
}

// everyGap is a kernel that lacks every feature portlife can do without,
// as Linux 5.10 does: tests take the fallbacks on any kernel with it.
var everyGap = kernelFeatures{
	gaps: portlifeKernelGapGAP_SK_STORAGE | portlifeKernelGapGAP_SOCKET_COOKIE |
		portlifeKernelGapGAP_TASK_STORAGE | portlifeKernelGapGAP_SOCK_FROM_FILE |
		portlifeKernelGapGAP_DATAGRAM_HOOKS,
}

// probeFeatures asks the running kernel what it has.
func probeFeatures(kernel *btf.Spec) (kernelFeatures, error) {
	var f kernelFeatures
	tracepoints := true
	for _, tp := range []string{"sock_send_length", "sock_recv_length"} {
		if _, err := kernel.AnyTypeByName("btf_trace_" + tp); err != nil {
			tracepoints = false
		}
	}
	for _, p := range []struct {
		gap portlifeKernelGap
		fn  asm.BuiltinFunc
	}{
		{portlifeKernelGapGAP_SK_STORAGE, asm.FnSkStorageGet},
		{portlifeKernelGapGAP_SOCKET_COOKIE, asm.FnGetSocketCookie},
		{portlifeKernelGapGAP_SOCK_FROM_FILE, asm.FnSockFromFile},
	} {
		ok, err := tracingHelper(p.fn)
		if err != nil {
			return f, err
		}
		if !ok {
			f.gaps |= p.gap
		}
	}
	// The syscall hooks are tracepoint programs; the storage is keyed by
	// the task from bpf_get_current_task_btf().
	for _, fn := range []asm.BuiltinFunc{asm.FnTaskStorageGet, asm.FnGetCurrentTaskBtf} {
		switch err := features.HaveProgramHelper(ebpf.TracePoint, fn); {
		case errors.Is(err, ebpf.ErrNotSupported):
			f.gaps |= portlifeKernelGapGAP_TASK_STORAGE
		case err != nil:
			return f, fmt.Errorf("probing %v in tracepoint programs: %w", fn, err)
		}
	}
	// The datagram handlers use socket storage and cookies, which tracing
	// programs have from Linux 5.12: before that, no datagram counts.
	if f.gaps&(portlifeKernelGapGAP_SK_STORAGE|portlifeKernelGapGAP_SOCKET_COOKIE) == 0 {
		var err error
		f.recvArgs, err = probeUDPFexit(kernel)
		f.udpFexit = err == nil
		if err != nil {
			f.noFexit = err.Error()
		}
	} else {
		f.noFexit = "tracing programs lack socket storage or cookies"
	}
	if !tracepoints && !f.udpFexit {
		f.gaps |= portlifeKernelGapGAP_DATAGRAM_HOOKS
	}
	return f, nil
}

// probeUDPFexit reports whether fexit programs attach to UDP's send and
// receive functions here, and how many arguments udp_recvmsg takes; if
// not, why not, for the start-up line. It attaches an empty program to
// udp_sendmsg for a moment: a kernel without ftrace's trampolines loads
// fexit programs but cannot attach them. Any failure means no: the
// tracepoints stand in.
func probeUDPFexit(kernel *btf.Spec) (recvArgs uint8, err error) {
	args := map[string]int{}
	for _, name := range []string{"udp_sendmsg", "udpv6_sendmsg", "udp_recvmsg", "udpv6_recvmsg"} {
		var fn *btf.Func
		if err := kernel.TypeByName(name, &fn); err != nil {
			return 0, fmt.Errorf("finding %s: %w", name, err) // IPv6 as a module, say
		}
		proto, ok := fn.Type.(*btf.FuncProto)
		if !ok {
			return 0, fmt.Errorf("%s is not a function", name)
		}
		args[name] = len(proto.Params)
	}
	// The shapes the programs know: 3 arguments to send; 4 to 6 to
	// receive (bpf/portlife.bpf.c).
	recv := args["udp_recvmsg"]
	if args["udp_sendmsg"] != 3 || args["udpv6_sendmsg"] != 3 || recv != args["udpv6_recvmsg"] || recv < 4 || recv > 6 {
		return 0, fmt.Errorf("unknown shapes: %v arguments", args)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.Tracing,
		AttachType:   ebpf.AttachTraceFExit,
		AttachTo:     "udp_sendmsg",
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		if errors.Is(err, unix.EPERM) {
			err = unix.EPERM // as root too: not the memlock limit cilium/ebpf suggests
		}
		return 0, fmt.Errorf("loading: %w", err)
	}
	defer prog.Close()
	l, err := link.AttachTracing(link.TracingOptions{Program: prog})
	if err != nil {
		return 0, fmt.Errorf("attaching: %w", err)
	}
	l.Close()
	return uint8(recv), nil
}

// tracingHelper reports whether tracing programs may call fn: it loads one
// on sock:inet_sock_set_state that passes the socket to fn. A kernel that
// lacks fn, or keeps it from tracing programs, says "unknown func" or
// "invalid func"; any other verdict (the socket is the wrong argument for
// fn, say) means the kernel knows fn there.
func tracingHelper(fn asm.BuiltinFunc) (bool, error) {
	prog, err := ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{
		Type:       ebpf.Tracing,
		AttachType: ebpf.AttachTraceRawTp,
		AttachTo:   "inet_sock_set_state",
		License:    "GPL",
		Instructions: asm.Instructions{
			asm.LoadMem(asm.R1, asm.R1, 0, asm.DWord), // the struct sock
			asm.Mov.Imm(asm.R2, 0),
			asm.Mov.Imm(asm.R3, 0),
			asm.Mov.Imm(asm.R4, 0),
			fn.Call(),
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
		},
	}, ebpf.ProgramOptions{LogLevel: ebpf.LogLevelInstruction})
	if err == nil {
		prog.Close()
		return true, nil
	}
	var verr *ebpf.VerifierError
	switch {
	case !errors.As(err, &verr):
		return false, fmt.Errorf("probing %v in tracing programs: %w", fn, err)
	case errors.Is(err, unix.EINVAL) && logSays(verr.Log, "unknown func", "invalid func"):
		return false, nil
	}
	return true, nil
}

func logSays(log []string, needles ...string) bool {
	for _, line := range log[max(len(log)-5, 0):] {
		for _, n := range needles {
			if strings.Contains(line, n) {
				return true
			}
		}
	}
	return false
}

// Sizes of the tables that stand in for storage this kernel lacks.
const (
	// maxCallsInFlight: connect() and bind() calls at once, one per thread;
	// preallocated (about 100 bytes each).
	maxCallsInFlight = 1 << 14
	// maxConnectedUDP: connected UDP sockets whose open connect()'s return
	// sent, until their next cgroup hook; preallocated (16 bytes each).
	maxConnectedUDP = 1 << 16
	// maxListenerPorts: a network namespace has at most 65,535 ports, and
	// few hosts listen on more than a few hundred, in all namespaces.
	maxListenerPorts = 1 << 16
)

// adapt fits the program to this kernel before it is loaded: the tables
// that stand in for missing storage are sized, the storage they replace
// becomes a map type every kernel has, and a program whose hook the kernel
// lacks is left as a placeholder that is never attached.
func (f kernelFeatures) adapt(spec *ebpf.CollectionSpec, maxSockets uint32) {
	if f.gaps&portlifeKernelGapGAP_SK_STORAGE != 0 {
		spec.Maps["conns_by_sk"].MaxEntries = maxSockets
		spec.Maps["listeners"].MaxEntries = maxListenerPorts
	}
	if f.gaps&portlifeKernelGapGAP_TASK_STORAGE != 0 {
		// Only the pruned path names it, but it must exist to be loaded;
		// preallocated, as Linux 5.10 warns of tracepoint programs that
		// name a map allocating as it goes.
		calls := spec.Maps["calls"]
		calls.Type, calls.MaxEntries, calls.Flags = ebpf.Hash, 1, 0
		spec.Maps["calls_by_tid"].MaxEntries = maxCallsInFlight
	}
	if !f.datagramHooks() {
		spec.Maps["udp_opened"].MaxEntries = maxConnectedUDP
	}
	// Of the programs that count datagrams, only those that attach here load.
	unused := []string{"udp_tx4", "udp_tx6", "udp_rx4", "udp_rx6"}
	switch {
	case f.udpFexit:
		unused = []string{"udp_sent", "udp_recvd"}
	case !f.datagramTracepoints():
		unused = append(unused, "udp_sent", "udp_recvd")
	}
	for _, name := range unused {
		p := spec.Programs[name]
		p.Type, p.AttachType, p.AttachTo = ebpf.SocketFilter, ebpf.AttachNone, ""
		p.Instructions = asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}
	}
}

// KernelCookies reports whether every event carries the kernel's socket
// cookie, the one sock_diag and SO_COOKIE show. Before Linux 5.12
// (GAP_SOCKET_COOKIE) nearly all do, by way of the cgroup/sock_create and
// sockops programs and a sock_diag listing at start (giveCookies), but a
// TCP socket they all missed carries its address instead.
func (t *Tracer) KernelCookies() bool { return t.features.gaps&portlifeKernelGapGAP_SOCKET_COOKIE == 0 }
