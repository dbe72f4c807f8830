package tracer

import (
	"context"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/cilium/ebpf/btf"
	"github.com/portlife/portlife/internal/event"
	"github.com/portlife/portlife/internal/kerneltest"
)

// The end-to-end tests load the real program into the running kernel and
// make real connections on loopback or in network namespaces they create.
// The tracer sees the whole host, so each test picks out its own events by
// pid and ports.

var requireRoot = kerneltest.RequireRoot

// collector is a Sink that keeps every event, for tests to wait on.
type collector struct {
	mu      sync.Mutex
	events  []event.Event
	changed chan struct{}
}

func newCollector() *collector { return &collector{changed: make(chan struct{}, 1)} }

func (c *collector) Write(e *event.Event) error {
	c.mu.Lock()
	c.events = append(c.events, *e)
	c.mu.Unlock()
	select {
	case c.changed <- struct{}{}:
	default:
	}
	return nil
}

func (c *collector) Flush() error { return nil }

// matching returns the events for which keep is true, in arrival order.
func (c *collector) matching(keep func(*event.Event) bool) []event.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []event.Event
	for i := range c.events {
		if keep(&c.events[i]) {
			out = append(out, c.events[i])
		}
	}
	return out
}

// waitFor waits until at least n events match, and returns them all.
func (c *collector) waitFor(t *testing.T, n int, keep func(*event.Event) bool) []event.Event {
	t.Helper()
	got, ok := c.await(n, keep, 10*time.Second)
	if !ok {
		t.Fatalf("waited 10s for %d matching events, got %d: %+v", n, len(got), got)
	}
	return got
}

// await waits up to d until at least n events match; it returns them, and
// whether there were n.
func (c *collector) await(n int, keep func(*event.Event) bool, d time.Duration) ([]event.Event, bool) {
	deadline := time.After(d)
	for {
		if got := c.matching(keep); len(got) >= n {
			return got, true
		}
		select {
		case <-c.changed:
		case <-deadline:
			return c.matching(keep), false
		}
	}
}

// running is a Tracer started by startTracer, with its events.
type running struct {
	*Tracer
	events *collector
}

// startTracer loads and attaches a tracer with filter f; the test's cleanup
// stops and closes it.
func startTracer(t *testing.T, f event.Filter) *running {
	t.Helper()
	r := &running{events: newCollector()}
	r.Tracer = startTracerTo(t, f, r.events)
	return r
}

// startTracerTo is startTracer with an Output of the test's own.
func startTracerTo(t *testing.T, f event.Filter, out Output) *Tracer {
	t.Helper()
	requireRoot(t)
	cfg := DefaultConfig()
	cfg.Filter = f
	cfg.FlushInterval = 10 * time.Millisecond
	cfg.RingBufferSize = 16 << 20
	cfg.kernel = forcedFallbacks
	tr, err := New(cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatalf("starting the tracer: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx, out) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if err := tr.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return tr
}

// forcedFallbacks, with PORTLIFE_TEST_FALLBACKS=all in the environment
// (make test sets it for a second run), has every test take every fallback
// a kernel older than this one needs, as on Linux 5.10: both paths run on
// any kernel.
var forcedFallbacks = func() *kernelFeatures {
	if os.Getenv("PORTLIFE_TEST_FALLBACKS") == "all" {
		return &everyGap
	}
	return nil
}()

// runningKernel is what the running kernel lets portlife use, or the
// forced fallbacks.
func runningKernel(t *testing.T) kernelFeatures {
	t.Helper()
	if forcedFallbacks != nil {
		return *forcedFallbacks
	}
	kernel, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatal(err)
	}
	f, err := probeFeatures(kernel)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// requireCounted reports whether UDP event e carries datagram counts to
// check: it must where the kernel has the datagram hooks (Linux 6.3), and
// must say they are unknown where it has not.
func (r *running) requireCounted(t *testing.T, e *event.Event) bool {
	t.Helper()
	if e.Uncounted == r.features.datagramHooks() {
		t.Errorf("uncounted is %v on a kernel with datagram hooks %v: %+v", e.Uncounted, r.features.datagramHooks(), e)
	}
	return r.features.datagramHooks()
}

// waitCounted waits, as waitFor does, until n events match, and returns
// them and how many are missing. Short of n, the test goes on only if the
// kernel counted skipped program runs (Stats.SkippedRuns) that cover the
// shortfall: a run the kernel skipped (a tracepoint that fired on a CPU
// where the program was running already) is the one way an event may be
// missing, and one skipped run costs at most both events of one lifetime.
func (r *running) waitCounted(t *testing.T, n int, keep func(*event.Event) bool) ([]event.Event, int) {
	t.Helper()
	got, ok := r.events.await(n, keep, 10*time.Second)
	if ok {
		return got, 0
	}
	s, err := r.Stats()
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	missing := n - len(got)
	if uint64(missing) > 2*s.SkippedRuns {
		t.Fatalf("waited 10s for %d matching events, got %d, and only %d skipped program runs counted: lost without a count: %+v", n, len(got), s.SkippedRuns, got)
	}
	t.Logf("%d of %d events missing, covered by %d skipped program runs counted", missing, n, s.SkippedRuns)
	return got, missing
}

// requireNothingLost fails the test if the kernel side dropped anything.
func (r *running) requireNothingLost(t *testing.T) {
	t.Helper()
	requireNothingLost(t, r.Tracer)
}

func requireNothingLost(t *testing.T, tr *Tracer) {
	t.Helper()
	s, err := tr.Stats()
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	if s.Lost() != 0 {
		t.Fatalf("the kernel side lost events: %+v", s)
	}
}

// ofConn selects the events of one TCP connection, seen from either side.
func ofConn(local, remote netip.AddrPort) func(*event.Event) bool {
	return func(e *event.Event) bool {
		return e.Proto == event.ProtoTCP && (e.Local == local && e.Remote == remote || e.Local == remote && e.Remote == local)
	}
}

func addrPort(t *testing.T, a net.Addr) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		t.Fatalf("parsing %v: %v", a, err)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// loopbackConn connects to a new IPv4 loopback listener and returns the
// client end and the listener's address; both close when the test ends.
func loopbackConn(t *testing.T) (net.Conn, netip.AddrPort) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, addrPort(t, ln.Addr())
}
