package tracer

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/event"
)

// 1,000 connections between two other processes: every one is reported
// exactly once from each side, with that side's pid, and nothing is lost
// without a count.
func TestTCPSeparateProcesses(t *testing.T) {
	const conns = 1000
	r := startTracer(t, event.Filter{})

	server := startHelper(t, "server", "pl-server", nil)
	serverPort, err := strconv.Atoi(server.line(t))
	if err != nil {
		t.Fatal(err)
	}
	client := startHelper(t, "client", fmt.Sprintf("%d@127.0.0.1:%d", conns, serverPort), nil)
	truth := map[uint16]int{} // client port -> connections that used it
	for i := 0; i < conns; i++ {
		p, err := strconv.Atoi(client.line(t))
		if err != nil {
			t.Fatal(err)
		}
		truth[uint16(p)]++
	}

	isOurs := func(e *event.Event) bool {
		return e.Kind == event.KindClose && e.Proto == event.ProtoTCP &&
			(e.Remote.Port() == uint16(serverPort) && e.PID == client.pid() ||
				e.Local.Port() == uint16(serverPort) && e.PID == server.pid())
	}
	// Every close arrives, or its loss is counted: a hook run the kernel
	// skipped (on 7.x, a tracepoint that fired again on the CPU while the
	// program ran) is the one way to miss one, and Stats counts those.
	got, _ := r.events.await(2*conns, isOurs, 10*time.Second)
	stats, err := r.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if missing := 2*conns - len(got); missing > 0 {
		if uint64(missing) > stats.SkippedRuns {
			t.Fatalf("%d of %d close events missing, and only %d skipped hook runs counted: lost without a count", missing, 2*conns, stats.SkippedRuns)
		}
		t.Logf("%d of %d close events missing, covered by %d skipped hook runs counted", missing, 2*conns, stats.SkippedRuns)
	}
	out, in := map[uint16]int{}, map[uint16]int{}
	picked := 0
	for _, e := range got {
		switch {
		case e.Direction == event.DirectionOutbound && e.PID == client.pid() && e.PIDSource == event.PIDSourceConnect:
			out[e.Local.Port()]++
		case e.Direction == event.DirectionOutbound && e.PID == client.pid() && e.PIDSource == event.PIDSourceClose:
			// Its connect()'s run was skipped: picked up at ESTABLISHED,
			// and its close() named the owner (missed_opening).
			out[e.Local.Port()]++
			picked++
		case e.Direction == event.DirectionInbound && e.PID == server.pid() && e.PIDSource == event.PIDSourceListener:
			in[e.Remote.Port()]++
		default:
			t.Errorf("event with the wrong direction or pid: %+v", e)
		}
	}
	if picked > 0 {
		if uint64(picked) > stats.SkippedRuns {
			t.Errorf("%d connections picked up after a skipped connect(), but only %d skipped hook runs counted", picked, stats.SkippedRuns)
		}
		t.Logf("%d connections whose connect() the kernel skipped, picked up at ESTABLISHED", picked)
	}
	for port, n := range truth {
		if len(got) < 2*conns && (out[port] < n || in[port] < n) {
			continue // a counted loss: checked above
		}
		if out[port] != n || in[port] != n {
			t.Errorf("port %d: %d connections, reported %d times by the client side and %d by the server side", port, n, out[port], in[port])
		}
	}
	if len(got) > 2*conns {
		t.Errorf("%d close events, want %d", len(got), 2*conns)
	}
	r.requireNothingLost(t)
}

// In a namespace whose ephemeral range holds two ports, the third connect
// to the same destination finds no port: one connect_failed, attributed.
func TestTCPNoEphemeralPort(t *testing.T) {
	r := startTracer(t, event.Filter{})
	h := startHelper(t, "exhaust", "40000 40001", &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET})
	f := strings.Fields(h.line(t))
	if len(f) != 2 || f[0] != strconv.Itoa(int(unix.EADDRNOTAVAIL)) || f[1] != "2" {
		t.Fatalf("helper reported errno and connections %q, want EADDRNOTAVAIL (%d) after 2", f, unix.EADDRNOTAVAIL)
	}
	hostNetns := netnsInode(t, "/proc/self/ns/net")

	dst := netip.MustParseAddrPort("127.0.0.1:5000")
	isFailure := func(e *event.Event) bool {
		return e.Kind == event.KindConnectFailed && e.PID == h.pid()
	}
	// The failure is reported with the two good connects' opens; wait for
	// those, then there must be exactly one failure.
	r.events.waitFor(t, 2, func(e *event.Event) bool {
		return e.Kind == event.KindOpen && e.PID == h.pid() && e.Direction == event.DirectionOutbound
	})
	got := r.events.waitFor(t, 1, isFailure)
	if len(got) != 1 {
		t.Fatalf("%d connect_failed events, want 1: %+v", len(got), got)
	}
	e := got[0]
	check(t, "connect_failed", "reason", e.Reason(), "no_ephemeral_port")
	check(t, "connect_failed", "remote", e.Remote, dst)
	check(t, "connect_failed", "local port", e.Local.Port(), 0)
	check(t, "connect_failed", "errno", e.Errno, unix.EADDRNOTAVAIL)
	check(t, "connect_failed", "pid source", e.PIDSource, event.PIDSourceConnect)
	check(t, "connect_failed", "ephemeral", e.Ephemeral, true)
	if e.NetNS == hostNetns || e.NetNS == 0 {
		t.Errorf("netns %d, want the helper's own namespace (the host's is %d)", e.NetNS, hostNetns)
	}
}

func netnsInode(t *testing.T, path string) uint32 {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return uint32(st.Ino)
}
