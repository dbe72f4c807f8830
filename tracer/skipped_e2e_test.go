package tracer

import (
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
)

// A tracing program the kernel skips because it is already running on the
// CPU is counted. Recursion is forced here with a program on the
// bpf_trace_printk tracepoint that itself calls bpf_trace_printk: its
// second, nested run is skipped, once per outer call. (portlife's own
// programs meet this when an interrupt fires a socket tracepoint while one
// runs; Linux 7.x under emulation showed it on inet_sock_set_state.)
func TestSkippedRunsAreCounted(t *testing.T) {
	requireRoot(t)
	printk := func() asm.Instructions {
		return asm.Instructions{
			asm.Mov.Imm(asm.R1, 0x0a78), // "x\n"
			asm.StoreMem(asm.RFP, -8, asm.R1, asm.DWord),
			asm.Mov.Reg(asm.R1, asm.RFP),
			asm.Add.Imm(asm.R1, -8),
			asm.Mov.Imm(asm.R2, 8),
			asm.FnTracePrintk.Call(),
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
		}
	}
	nested, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "pl_test_nested", Type: ebpf.Tracing, AttachType: ebpf.AttachTraceRawTp,
		AttachTo: "bpf_trace_printk", License: "GPL", Instructions: printk(),
	})
	if err != nil {
		t.Fatalf("loading the nested program: %v", err)
	}
	defer nested.Close()
	l, err := link.AttachTracing(link.TracingOptions{Program: nested})
	if err != nil {
		t.Fatalf("attaching to bpf_trace_printk: %v", err)
	}
	defer l.Close()
	// The outer call: a socket filter run once per BPF_PROG_TEST_RUN.
	outer, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "pl_test_outer", Type: ebpf.SocketFilter, License: "GPL", Instructions: printk(),
	})
	if err != nil {
		t.Fatalf("loading the outer program: %v", err)
	}
	defer outer.Close()

	const calls = 10
	before, err := skippedRuns([]*ebpf.Program{nested})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < calls; i++ {
		if _, err := outer.Run(&ebpf.RunOptions{Data: make([]byte, 14)}); err != nil {
			t.Fatalf("running the outer program: %v", err)
		}
	}
	after, err := skippedRuns([]*ebpf.Program{nested})
	if err != nil {
		t.Fatal(err)
	}
	want := uint64(calls)
	if !countsRecursionMisses(t) {
		// Before Linux 5.12 the kernel neither skips a nested run nor
		// counts one: nothing is lost, and nothing is counted.
		want = 0
	}
	if got := after - before; got != want {
		t.Errorf("%d skipped runs counted for %d forced recursions, want %d", got, calls, want)
	}
}

// countsRecursionMisses reports whether the kernel skips a tracing program
// that is already running on the CPU, and counts it (Linux 5.12): its
// program info has recursion_misses.
func countsRecursionMisses(t *testing.T) bool {
	t.Helper()
	kernel, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatal(err)
	}
	var info *btf.Struct
	if err := kernel.TypeByName("bpf_prog_info", &info); err != nil {
		t.Fatal(err)
	}
	for _, m := range info.Members {
		if m.Name == "recursion_misses" {
			return true
		}
	}
	return false
}
