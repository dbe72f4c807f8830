package tracer

import (
	"io"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/event"
)

// The kernel does not run a tracing program that an interrupt finds already
// running on its CPU: in a burst of closes, the ACKs and FINs a softirq
// handles while a process's close() runs the state hook change states
// unseen (Stats.SkippedRuns counts those runs). A connection whose end was
// not seen is reported all the same when its socket is destroyed. Here the
// state hook is detached while the connection ends, as if the kernel had
// skipped each of its runs.
func TestStateHookSkipped(t *testing.T) {
	r := startTracer(t, event.Filter{})
	t.Run("close", func(t *testing.T) {
		p := connect(t, tcpFamilies[0])
		p.echo(t)
		// Seen: on loopback the client's FIN is sent and acknowledged
		// within close(), FIN_WAIT1 and FIN_WAIT2.
		p.client.Close()
		if _, err := p.server.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("the server read %v, want EOF", err)
		}
		var got []event.Event
		r.withoutStateHook(t, func() {
			// Unseen: LAST_ACK, the client's TIME_WAIT, and both ends'
			// TCP_CLOSE. The sockets are destroyed meanwhile.
			p.server.Close()
			got = r.events.waitFor(t, 2, func(e *event.Event) bool {
				return e.Kind == event.KindClose && ofConn(p.local, p.remote)(e)
			})
		})
		if len(got) != 2 {
			t.Fatalf("%d close events, want one for each side: %+v", len(got), got)
		}
		for _, e := range got {
			key := e.Direction.String()
			out := e.Direction == event.DirectionOutbound
			wantBy, wantTW := event.ClosedByRemote, false
			if out {
				wantBy, wantTW = event.ClosedByLocal, true
			}
			check(t, key, "closed by", e.ClosedBy, wantBy)
			check(t, key, "time wait", e.TimeWait, wantTW)
			check(t, key, "reset", e.Reset, false)
			if e.TxBytes < payload || e.RxBytes < payload {
				t.Errorf("%s: tx %d rx %d bytes, want at least %d each", key, e.TxBytes, e.RxBytes, payload)
			}
			if e.Duration() <= 0 {
				t.Errorf("%s: duration %v, want > 0", key, e.Duration())
			}
		}
	})
	t.Run("connect timeout", func(t *testing.T) {
		s := stallConnect(t)
		var got []event.Event
		r.withoutStateHook(t, func() {
			s.timeOut(t)
			waitState(t, s.fd, stateClose)
			s.close() // destroys it
			got = r.events.waitFor(t, 1, func(e *event.Event) bool {
				return e.Local == s.local && e.Remote == s.remote
			})
		})
		if len(got) != 1 {
			t.Fatalf("%d events, want one connect_failed: %+v", len(got), got)
		}
		e := got[0]
		check(t, "connect_failed", "kind", e.Kind, event.KindConnectFailed)
		check(t, "connect_failed", "reason", e.Reason(), "timeout")
		check(t, "connect_failed", "errno", e.Errno, unix.ETIMEDOUT)
		check(t, "connect_failed", "pid source", e.PIDSource, event.PIDSourceConnect)
	})
	t.Run("connect", func(t *testing.T) {
		// Unseen: the connect()'s move into SYN_SENT. Its SYN is dropped,
		// so it is still connecting when the hook is back.
		var s *stalled
		r.withoutStateHook(t, func() { s = stallConnect(t) })
		s.unblock(t) // the retransmitted SYN is answered: ESTABLISHED, seen
		ofS := func(kind event.Kind) func(*event.Event) bool {
			return func(e *event.Event) bool { return e.Kind == kind && e.Local == s.local && e.Remote == s.remote }
		}
		open := r.events.waitFor(t, 1, ofS(event.KindOpen))[0]
		check(t, "open", "direction", open.Direction, event.DirectionOutbound)
		check(t, "open", "pid source", open.PIDSource, event.PIDSourceUnknown)
		check(t, "open", "pid", open.PID, uint32(0))
		s.close()
		closed := r.events.waitFor(t, 1, ofS(event.KindClose))[0]
		check(t, "close", "pid source", closed.PIDSource, event.PIDSourceClose)
		check(t, "close", "pid", closed.PID, uint32(os.Getpid()))
		check(t, "close", "closed by", closed.ClosedBy, event.ClosedByLocal)
	})
	r.requireNothingLost(t)
}

// withoutStateHook runs f with the TCP state hook detached.
func (r *running) withoutStateHook(t *testing.T, f func()) {
	t.Helper()
	i := r.stateHook(t)
	r.mu.Lock()
	err := r.links[i].Close()
	r.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		l, err := link.AttachTracing(link.TracingOptions{Program: r.objs.TcpState})
		if err != nil {
			t.Fatalf("attaching the state hook again: %v", err)
		}
		r.mu.Lock()
		r.links[i] = l
		r.mu.Unlock()
	}()
	f()
}

// stateHook is the index of sock:inet_sock_set_state's link: after those of
// the hooks attached before it (before Linux 5.12, the cookie hooks).
func (r *running) stateHook(t *testing.T) int {
	t.Helper()
	i := 0
	for _, h := range r.hooks() {
		if h.name == "sock:inet_sock_set_state" {
			return i
		}
		if h.wanted {
			i++
		}
	}
	t.Fatal("no sock:inet_sock_set_state hook")
	return 0
}

// waitState waits up to 10s for the socket to reach a TCP state.
func waitState(t *testing.T, fd int, state uint8) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); tcpState(t, fd) != state; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the socket is in TCP state %d after 10s, want %d", tcpState(t, fd), state)
		}
	}
}
