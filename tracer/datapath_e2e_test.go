package tracer

import (
	"io"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/event"
	"github.com/portlife/portlife/internal/kerneltest"
)

// A TCP connection that only moves data runs none of portlife's datagram
// programs where the kernel attaches fexit: they hook UDP's own send and
// receive functions. Where it cannot, the sock_send_length and
// sock_recv_length tracepoints stand in, and run for every send and
// receive on the host, TCP's included: the test counts those runs too, so
// that the cost the README states is the one the kernel shows.
func TestTCPDataRunsNoDatagramProgram(t *testing.T) {
	r := startTracer(t, event.Filter{})
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		t.Fatalf("enabling the kernel's program statistics: %v", err)
	}
	defer stats.Close()

	client, server := kerneltest.TCPPair(t)

	p := &r.objs.portlifePrograms
	programs := map[string]*ebpf.Program{
		"udp_sent": p.UdpSent, "udp_recvd": p.UdpRecvd, "udp_tx4": p.UdpTx4, "udp_tx6": p.UdpTx6,
		"udp_rx4": p.UdpRx4, "udp_rx6": p.UdpRx6,
	}
	runs := func() uint64 {
		var n uint64
		for name, prog := range programs {
			s, err := prog.Stats()
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			n += s.RunCount
		}
		return n
	}

	const roundTrips = 2000
	buf := make([]byte, 64)
	before := runs()
	for range roundTrips {
		if _, err := client.Write(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(server, buf); err != nil {
			t.Fatal(err)
		}
		if _, err := server.Write(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(client, buf); err != nil {
			t.Fatal(err)
		}
	}
	got := runs() - before

	if r.features.datagramTracepoints() {
		// Two sends and two receives per round trip, at least.
		if got < 4*roundTrips {
			t.Errorf("the datagram tracepoints ran %d times for %d TCP round trips, want at least %d", got, roundTrips, 4*roundTrips)
		}
		t.Logf("the datagram tracepoints ran %d times for %d TCP round trips", got, roundTrips)
		return
	}
	// Other UDP traffic on the host may run them a few times meanwhile.
	if got > roundTrips/10 {
		t.Errorf("the datagram programs ran %d times for %d TCP round trips, want none (fexit %v)", got, roundTrips, r.features.udpFexit)
	}
}
