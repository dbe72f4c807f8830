package timewait

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/event"
	"github.com/portlife/portlife/internal/kerneltest"
	nspath "github.com/portlife/portlife/internal/netns"
	"github.com/portlife/portlife/internal/stream"
	"github.com/portlife/portlife/tracer"
)

// The end-to-end tests load the real tracer, with a Tracker subscribed to
// its stream, and make connections in network namespaces they create. A
// test polls sock_diag itself, every 20 ms, to learn when each of its
// TIME_WAIT sockets left the kernel's table, and holds each released event
// to that.

// collector is the stream's primary output: it keeps every event.
type collector struct {
	mu      sync.Mutex
	events  []event.Event
	changed chan struct{}
}

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

// waitFor waits up to d until n events match, and returns those that do.
func (c *collector) waitFor(t *testing.T, n int, d time.Duration, keep func(*event.Event) bool) []event.Event {
	t.Helper()
	deadline := time.After(d)
	for {
		c.mu.Lock()
		var got []event.Event
		for i := range c.events {
			if keep(&c.events[i]) {
				got = append(got, c.events[i])
			}
		}
		c.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-c.changed:
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatalf("waited %v for %d matching events, got %d: %+v", d, n, len(got), got)
		}
	}
}

// startTracing runs the tracer into a stream whose primary output is the
// returned collector, with a Tracker subscribed; cleanup stops it all.
func startTracing(t *testing.T) (*collector, *Tracker) {
	t.Helper()
	kerneltest.RequireRoot(t)
	cfg := tracer.DefaultConfig()
	cfg.FlushInterval = 10 * time.Millisecond
	cfg.RingBufferSize = 16 << 20
	cfg.Filter.Protos = []event.Proto{event.ProtoTCP}
	tr, err := tracer.New(cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatalf("starting the tracer: %v", err)
	}
	c := &collector{changed: make(chan struct{}, 1)}
	s := stream.New(c)
	tw := New(DefaultConfig(), s, zaptest.NewLogger(t))
	s.Subscribe("timewait", tw, 8192)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := tw.Run(ctx); err != nil {
			t.Errorf("Tracker.Run: %v", err)
		}
	}()
	go func() {
		defer wg.Done()
		if err := tr.Run(ctx, s); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		if err := s.Close(); err != nil {
			t.Errorf("stream Close: %v", err)
		}
		if err := tr.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		// The tracker watches every namespace on the host, and others'
		// tests come and go: only its capacity is the test's to check.
		if s := tw.Stats(); s.Untracked != 0 {
			t.Errorf("releases lost: %+v", s)
		}
	})
	return c, tw
}

// netns is a namespace of the test's own (kerneltest.Netns), under the
// names bench_test.go uses.
type netns struct {
	*kerneltest.Netns
	ino uint32
}

func newNetns(t testing.TB, sysctls map[string]string) *netns {
	t.Helper()
	ns := kerneltest.NewNetns(t, sysctls)
	return &netns{ns, ns.Inode}
}

// do runs f in the namespace.
func (ns *netns) do(f func() error) error { return ns.Do(f) }

// listen opens a listener on 127.0.0.1 in the namespace, which the test's
// cleanup closes; it returns the fd and the port.
func (ns *netns) listen(t *testing.T) (int, uint16) {
	t.Helper()
	var fd int
	var port uint16
	err := ns.do(func() (err error) {
		fd, port, err = kerneltest.ListenLoopback(128)
		return err
	})
	if err != nil {
		t.Fatalf("listening: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd, port
}

// closeFirst connects from localPort (0: any) to the listener, and closes
// our side first (kerneltest.CloseFirst): our side is in TIME_WAIT when it
// returns our local port.
func (ns *netns) closeFirst(t *testing.T, ln int, port, localPort uint16) uint16 {
	t.Helper()
	var src *unix.SockaddrInet4
	if localPort != 0 {
		src = &unix.SockaddrInet4{Addr: kerneltest.Loopback4, Port: int(localPort)}
	}
	var lport uint16
	err := ns.do(func() (err error) {
		lport, err = kerneltest.CloseFirst(ln, port, src)
		return err
	})
	if err != nil {
		t.Fatalf("connection from port %d: %v", localPort, err)
	}
	return lport
}

// oracle polls sock_diag in a namespace every 20 ms and records, per
// TIME_WAIT socket, the first and the last time it was present.
type oracle struct {
	mu          sync.Mutex
	first, last map[twKey]time.Time
	due         map[twKey]time.Time // when its timer was due, as first seen
	ports       map[uint16]bool
	stop        func()
}

// twSeen is a TIME_WAIT in a dump, and when its timer is due.
type twSeen struct {
	twKey
	expires time.Duration
}

// twKey is one TIME_WAIT: its local port, and its cookie, which tells a
// port's successive TIME_WAITs apart.
type twKey struct {
	port   uint16
	cookie uint64
}

func watchTimeWait(t *testing.T, ns *netns) *oracle {
	t.Helper()
	var fd int
	if err := ns.do(func() (err error) {
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	o := &oracle{first: map[twKey]time.Time{}, last: map[twKey]time.Time{}, due: map[twKey]time.Time{}, ports: map[uint16]bool{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64<<10)
		for ctx.Err() == nil {
			ports, err := dumpByFamily(fd, buf)
			now := time.Now()
			if err != nil {
				t.Errorf("oracle: %v", err)
				return
			}
			o.mu.Lock()
			for _, tw := range ports {
				k := tw.twKey
				if _, ok := o.first[k]; !ok {
					o.first[k] = now
					o.due[k] = now.Add(tw.expires)
				}
				o.last[k] = now
				o.ports[k.port] = true
			}
			o.mu.Unlock()
			time.Sleep(20 * time.Millisecond)
		}
	}()
	o.stop = func() { cancel(); <-done; unix.Close(fd) }
	t.Cleanup(o.stop)
	return o
}

// gone says when the TIME_WAIT of a close was last seen, and whether it is
// gone (not seen for 100 ms, five polls).
func (o *oracle) gone(close *event.Event) (time.Time, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	last, ok := o.last[twKey{close.Local.Port(), close.Cookie}]
	return last, ok && time.Since(last) > 100*time.Millisecond
}

// seen says whether any TIME_WAIT on lport was seen.
func (o *oracle) seen(lport uint16) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.ports[lport]
}

// dumpByFamily lists the IPv4 TIME_WAIT sockets with SOCK_DIAG_BY_FAMILY:
// another request than the Tracker's, parsed apart.
func dumpByFamily(fd int, buf []byte) ([]twSeen, error) {
	var req struct {
		hdr unix.NlMsghdr
		// struct inet_diag_req_v2
		family, protocol, ext, pad uint8
		states                     uint32
		id                         inetDiagSockID
	}
	req.hdr = unix.NlMsghdr{Len: uint32(unsafe.Sizeof(req)), Type: unix.SOCK_DIAG_BY_FAMILY, Flags: unix.NLM_F_REQUEST | unix.NLM_F_DUMP}
	req.family, req.protocol, req.states = unix.AF_INET, unix.IPPROTO_TCP, 1<<tcpTimeWait|1<<tcpFinWait2
	if err := unix.Sendto(fd, (*[unsafe.Sizeof(req)]byte)(unsafe.Pointer(&req))[:], 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, err
	}
	var ports []twSeen
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return nil, err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return ports, nil
			case unix.NLMSG_ERROR:
				return nil, errors.New("sock_diag error")
			}
			// inet_diag_msg: family, state, timer, retrans, then the
			// sockid: sport, dport, src, dst, if, cookie; then
			// idiag_expires, in ms. A timewait socket's state is its
			// substate (FIN_WAIT2 until the peer's FIN), its timer 3.
			if len(m.Data) >= 56 && m.Data[2] == timerTimeWait {
				ports = append(ports, twSeen{
					twKey: twKey{
						port:   binary.BigEndian.Uint16(m.Data[4:6]),
						cookie: uint64(binary.NativeEndian.Uint32(m.Data[44:48])) | uint64(binary.NativeEndian.Uint32(m.Data[48:52]))<<32,
					},
					expires: time.Duration(binary.NativeEndian.Uint32(m.Data[52:56])) * time.Millisecond,
				})
			}
		}
	}
}

func ofPort(ns *netns, lport uint16, k event.Kind) func(*event.Event) bool {
	return func(e *event.Event) bool {
		return e.NetNS == ns.ino && e.Kind == k && e.Local.Port() == lport && e.Local.Addr() == netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
}

// within1s holds a released time to the oracle's.
func within1s(t *testing.T, lport uint16, got, want time.Time) {
	t.Helper()
	if d := got.Sub(want); d > time.Second || d < -time.Second {
		t.Errorf("port %d: released at %s, but its TIME_WAIT left the table at %s (%v apart; want within 1s)",
			lport, got.Format(time.StampMicro), want.Format(time.StampMicro), d)
	} else {
		t.Logf("port %d: released %v from when its TIME_WAIT left the table", lport, d)
	}
}

func TestReleased(t *testing.T) {
	events, _ := startTracing(t)

	// Each case runs in a namespace of its own, in parallel: expiry alone
	// takes a minute, the others wait on it.
	t.Run("expired", func(t *testing.T) {
		t.Parallel()
		ns := newNetns(t, nil)
		o := watchTimeWait(t, ns)
		ln, port := ns.listen(t)
		var ports []uint16
		for i := 0; i < 8; i++ {
			ports = append(ports, ns.closeFirst(t, ln, port, 0))
			time.Sleep(400 * time.Millisecond) // spread over timer wheel slots
		}
		for _, p := range ports {
			closes := events.waitFor(t, 1, 10*time.Second, ofPort(ns, p, event.KindClose))
			rel := events.waitFor(t, 1, 70*time.Second, ofPort(ns, p, event.KindReleased))[0]
			left, gone := o.gone(&closes[0])
			if !gone {
				t.Fatalf("port %d: released, but its TIME_WAIT is still there: %+v", p, rel)
			}
			if rel.Release != event.ReleaseExpired {
				t.Errorf("port %d: release %v, want expired", p, rel.Release)
			}
			if !rel.Start.Equal(closes[0].Time) || rel.Cookie != closes[0].Cookie || rel.PID != closes[0].PID {
				t.Errorf("port %d: released %+v does not repeat its close %+v", p, rel, closes[0])
			}
			within1s(t, p, rel.Time, left)
			// What this test measures of the kernel: a timer fires late,
			// by up to its timer wheel slot.
			o.mu.Lock()
			due := o.due[twKey{p, closes[0].Cookie}]
			o.mu.Unlock()
			t.Logf("port %d: its TIME_WAIT left the table %v after its timer was due", p, left.Sub(due).Round(time.Millisecond))
		}
	})

	// An orphan in FIN_WAIT2 becomes a timewait socket too, waiting for
	// the peer's FIN for tcp_fin_timeout, which a namespace sets: the same
	// timer and the same end as a TIME_WAIT's, in seconds.
	t.Run("expired in FIN_WAIT2", func(t *testing.T) {
		t.Parallel()
		ns := newNetns(t, map[string]string{"tcp_fin_timeout": "3"})
		o := watchTimeWait(t, ns)
		ln, port := ns.listen(t)
		var p uint16
		if err := ns.do(func() error {
			c, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			if err := unix.Connect(c, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: int(port)}); err != nil {
				unix.Close(c)
				return err
			}
			s, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC)
			if err != nil {
				unix.Close(c)
				return err
			}
			// The server never closes, so our FIN_WAIT2 waits in vain.
			t.Cleanup(func() { unix.Close(s) })
			sa, err := unix.Getsockname(c)
			if err != nil {
				unix.Close(c)
				return err
			}
			p = uint16(sa.(*unix.SockaddrInet4).Port)
			return unix.Close(c)
		}); err != nil {
			t.Fatal(err)
		}
		closes := events.waitFor(t, 1, 10*time.Second, ofPort(ns, p, event.KindClose))
		if !closes[0].TimeWait {
			t.Fatalf("port %d: close %+v without time_wait", p, closes[0])
		}
		rel := events.waitFor(t, 1, 15*time.Second, ofPort(ns, p, event.KindReleased))[0]
		left, gone := o.gone(&closes[0])
		if !gone {
			t.Fatalf("port %d: released, but its timewait socket is still there: %+v", p, rel)
		}
		if rel.Release != event.ReleaseExpired || rel.Duration() < 3*time.Second {
			t.Errorf("port %d: release %v after %v, want expired after tcp_fin_timeout (3s)", p, rel.Release, rel.Duration())
		}
		within1s(t, p, rel.Time, left)
	})

	t.Run("reused", func(t *testing.T) {
		t.Parallel()
		ns := newNetns(t, map[string]string{"tcp_tw_reuse": "1", "tcp_timestamps": "1"})
		o := watchTimeWait(t, ns)
		ln, port := ns.listen(t)
		p := ns.closeFirst(t, ln, port, 0)
		// Let a sweep see it, and let it age past tcp_tw_reuse_delay.
		time.Sleep(2500 * time.Millisecond)
		if !o.seen(p) {
			t.Fatalf("port %d: no TIME_WAIT to reuse", p)
		}
		if again := ns.closeFirst(t, ln, port, p); again != p {
			t.Fatalf("reconnected from port %d, want %d", again, p)
		}
		opens := events.waitFor(t, 2, 10*time.Second, ofPort(ns, p, event.KindOpen))
		rel := events.waitFor(t, 1, 10*time.Second, ofPort(ns, p, event.KindReleased))
		if rel[0].Release != event.ReleaseReused {
			t.Fatalf("port %d: release %v, want reused: %+v", p, rel[0].Release, rel[0])
		}
		if !rel[0].Time.Equal(opens[1].Start) {
			t.Errorf("port %d: reused at %s, want the new connect's start %s", p, rel[0].Time, opens[1].Start)
		}
		closes := events.waitFor(t, 2, 10*time.Second, ofPort(ns, p, event.KindClose))
		if rel[0].Cookie != closes[0].Cookie {
			t.Errorf("the release is not the first close's: %+v, closes %+v", rel[0], closes)
		}
		left, gone := o.gone(&closes[0])
		if !gone {
			t.Fatalf("port %d: the first TIME_WAIT is still there", p)
		}
		within1s(t, p, rel[0].Time, left)
	})

	// A connect that takes the 4-tuple and then fails (refused: the
	// listener is gone) ended the TIME_WAIT all the same.
	t.Run("reused by a connect that failed", func(t *testing.T) {
		t.Parallel()
		ns := newNetns(t, map[string]string{"tcp_tw_reuse": "1", "tcp_timestamps": "1"})
		o := watchTimeWait(t, ns)
		var ln int
		var port uint16
		if err := ns.do(func() (err error) {
			ln, port, err = kerneltest.ListenLoopback(8)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		p := ns.closeFirst(t, ln, port, 0)
		unix.Close(ln)
		time.Sleep(2500 * time.Millisecond)
		if !o.seen(p) {
			t.Fatalf("port %d: no TIME_WAIT to reuse", p)
		}
		err := ns.do(func() error {
			c, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(c)
			if err := unix.SetsockoptInt(c, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
				return err
			}
			if err := unix.Bind(c, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: int(p)}); err != nil {
				return err
			}
			return unix.Connect(c, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: int(port)})
		})
		if err != unix.ECONNREFUSED {
			t.Fatalf("connecting again with no listener: %v, want ECONNREFUSED", err)
		}
		failed := events.waitFor(t, 1, 10*time.Second, ofPort(ns, p, event.KindConnectFailed))
		rel := events.waitFor(t, 1, 10*time.Second, ofPort(ns, p, event.KindReleased))
		if rel[0].Release != event.ReleaseReused || !rel[0].Time.Equal(failed[0].Start) {
			t.Fatalf("port %d: released %v at %s, want reused at the failed connect's start %s", p, rel[0].Release, rel[0].Time, failed[0].Start)
		}
		closes := events.waitFor(t, 1, 10*time.Second, ofPort(ns, p, event.KindClose))
		left, gone := o.gone(&closes[0])
		if !gone {
			t.Fatalf("port %d: the TIME_WAIT is still there", p)
		}
		within1s(t, p, rel[0].Time, left)
	})

	t.Run("killed", func(t *testing.T) {
		t.Parallel()
		ns := newNetns(t, map[string]string{"tcp_rfc1337": "0"})
		o := watchTimeWait(t, ns)
		ln, port := ns.listen(t)
		p, rcvNxt := ns.closeFirstSeq(t, ln, port)
		// Let sweeps see it, so that its going is placed between two.
		time.Sleep(2500 * time.Millisecond)
		if !o.seen(p) {
			t.Fatalf("port %d: no TIME_WAIT to kill", p)
		}
		// An in-window reset, from the server's end: TIME_WAIT assassination.
		if err := ns.do(func() error { return sendReset(port, p, rcvNxt) }); err != nil {
			t.Fatalf("sending a reset: %v", err)
		}
		closes := events.waitFor(t, 1, 10*time.Second, ofPort(ns, p, event.KindClose))
		rel := events.waitFor(t, 1, 10*time.Second, ofPort(ns, p, event.KindReleased))[0]
		left, gone := o.gone(&closes[0])
		if !gone {
			t.Fatalf("port %d: released, but its TIME_WAIT is still there: %+v", p, rel)
		}
		if rel.Release != event.ReleaseKilled {
			t.Errorf("port %d: release %v, want killed", p, rel.Release)
		}
		within1s(t, p, rel.Time, left)
	})

	t.Run("overflow", func(t *testing.T) {
		t.Parallel()
		ns := newNetns(t, map[string]string{"tcp_max_tw_buckets": "1"})
		o := watchTimeWait(t, ns)
		ln, port := ns.listen(t)
		var ports []uint16
		for i := 0; i < 3; i++ {
			ports = append(ports, ns.closeFirst(t, ln, port, 0))
		}
		time.Sleep(200 * time.Millisecond)
		var overflowed int
		for _, p := range ports {
			if o.seen(p) {
				continue // it got the one bucket
			}
			overflowed++
			closes := events.waitFor(t, 1, 10*time.Second, ofPort(ns, p, event.KindClose))
			rel := events.waitFor(t, 1, 10*time.Second, ofPort(ns, p, event.KindReleased))[0]
			if rel.Release != event.ReleaseOverflow || !rel.Time.Equal(closes[0].Time) {
				t.Errorf("port %d: released %v at %s, want overflow at its close, %s", p, rel.Release, rel.Time, closes[0].Time)
			}
		}
		if overflowed != 2 {
			t.Errorf("%d of 3 closes overflowed tcp_max_tw_buckets=1, want 2", overflowed)
		}
	})
}

// closeFirstSeq is closeFirst, and it also returns the sequence number our
// TIME_WAIT expects next: the server's FIN's, plus one. The server reads it
// in repair mode (TCP_QUEUE_SEQ of its send queue) just before its close.
func (ns *netns) closeFirstSeq(t *testing.T, ln int, port uint16) (uint16, uint32) {
	t.Helper()
	var lport uint16
	var seq uint32
	err := ns.do(func() error {
		c, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(c)
		if err := unix.Connect(c, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: int(port)}); err != nil {
			return err
		}
		s, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC)
		if err != nil {
			return err
		}
		sa, err := unix.Getsockname(c)
		if err != nil {
			unix.Close(s)
			return err
		}
		lport = uint16(sa.(*unix.SockaddrInet4).Port)
		if err := unix.Shutdown(c, unix.SHUT_WR); err != nil {
			unix.Close(s)
			return err
		}
		var b [1]byte
		if _, err := unix.Read(s, b[:]); err != nil {
			unix.Close(s)
			return err
		}
		for _, o := range [][2]int{{unix.TCP_REPAIR, 1}, {unix.TCP_REPAIR_QUEUE, tcpSendQueue}} {
			if err := unix.SetsockoptInt(s, unix.IPPROTO_TCP, o[0], o[1]); err != nil {
				unix.Close(s)
				return fmt.Errorf("repair mode: %w", err)
			}
		}
		v, err := unix.GetsockoptInt(s, unix.IPPROTO_TCP, unix.TCP_QUEUE_SEQ)
		if err == nil {
			err = unix.SetsockoptInt(s, unix.IPPROTO_TCP, unix.TCP_REPAIR, 0)
		}
		if err != nil {
			unix.Close(s)
			return fmt.Errorf("reading the send sequence: %w", err)
		}
		seq = uint32(v) + 1 // the FIN takes one
		if err := unix.Close(s); err != nil {
			return err
		}
		_, err = unix.Read(c, b[:])
		return err
	})
	if err != nil {
		t.Fatalf("connection: %v", err)
	}
	return lport, seq
}

// sendReset sends a bare RST from 127.0.0.1:from to 127.0.0.1:to with
// sequence number seq, through a raw socket.
func sendReset(from, to uint16, seq uint32) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var h [20]byte
	binary.BigEndian.PutUint16(h[0:], from)
	binary.BigEndian.PutUint16(h[2:], to)
	binary.BigEndian.PutUint32(h[4:], seq)
	h[12] = 5 << 4 // data offset: 5 words
	h[13] = 0x04   // RST
	// The checksum covers a pseudo-header: addresses, protocol, length.
	sum := uint32(0x7f00+0x0001)*2 + unix.IPPROTO_TCP + uint32(len(h))
	for i := 0; i < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(h[16:], ^uint16(sum))
	return unix.Sendto(fd, h[:], 0, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}})
}

// tcpSendQueue is TCP_SEND_QUEUE, for TCP_REPAIR_QUEUE (linux/tcp.h).
const tcpSendQueue = 2

// One sweep finds the TIME_WAITs of both families, and of dual-stack
// sockets: IPv6 sockets talking to a v4-mapped address.
func TestDumpFindsEveryFamily(t *testing.T) {
	kerneltest.RequireRoot(t)
	ns := newNetns(t, nil)
	tests := []struct {
		name         string
		family       int
		listen, dial unix.Sockaddr
	}{
		{"ipv4", unix.AF_INET, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}},
		{"ipv6", unix.AF_INET6, &unix.SockaddrInet6{Addr: netip.IPv6Loopback().As16()}, &unix.SockaddrInet6{Addr: netip.IPv6Loopback().As16()}},
		{"v4-mapped", unix.AF_INET6, &unix.SockaddrInet6{}, &unix.SockaddrInet6{Addr: netip.MustParseAddr("::ffff:127.0.0.1").As16()}},
	}
	want := map[uint64]string{}
	for _, tt := range tests {
		err := ns.do(func() error {
			ln, err := unix.Socket(tt.family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(ln)
			if err := unix.Bind(ln, tt.listen); err != nil {
				return err
			}
			if err := unix.Listen(ln, 1); err != nil {
				return err
			}
			sa, err := unix.Getsockname(ln)
			if err != nil {
				return err
			}
			switch a := tt.dial.(type) {
			case *unix.SockaddrInet4:
				a.Port = sa.(*unix.SockaddrInet4).Port
			case *unix.SockaddrInet6:
				a.Port = sa.(*unix.SockaddrInet6).Port
			}
			c, err := unix.Socket(tt.family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(c)
			if err := unix.Connect(c, tt.dial); err != nil {
				return err
			}
			s, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC)
			if err != nil {
				return err
			}
			defer unix.Close(s)
			cookie, err := unix.GetsockoptUint64(c, unix.SOL_SOCKET, unix.SO_COOKIE)
			if err != nil {
				return err
			}
			want[cookie] = tt.name
			var b [1]byte
			unix.Shutdown(c, unix.SHUT_WR)
			unix.Read(s, b[:])
			unix.Shutdown(s, unix.SHUT_WR)
			_, err = unix.Read(c, b[:])
			return err
		})
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
	}
	tr := New(DefaultConfig(), nopPublisher{}, zaptest.NewLogger(t))
	h, err := tr.open(ns.ino, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	found, _, err := h.dumpTimeWait(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range found {
		if _, ok := want[s.cookie]; !ok {
			t.Errorf("a TIME_WAIT with cookie %d, not one of ours", s.cookie)
			continue
		}
		if s.expires <= 50*time.Second || s.expires > 60*time.Second {
			t.Errorf("%s: expires in %v, want a fresh 60s timer", want[s.cookie], s.expires)
		}
		delete(want, s.cookie)
	}
	for _, name := range want {
		t.Errorf("%s: its TIME_WAIT is not in the sweep", name)
	}
}

// A path found for a namespace may lead elsewhere by the time it is opened:
// its task went home (as portlife's own threads do after a visit), or exited
// and its pid went to a process in another namespace. The handle must be
// the namespace's asked for, found again, never the one the path leads to
// now: the sweeps would judge its TIME_WAITs by another namespace's.
func TestOpenHandleChecksTheNamespace(t *testing.T) {
	kerneltest.RequireRoot(t)
	ns := newNetns(t, nil)
	ln, port := ns.listen(t)
	ns.closeFirst(t, ln, port, 0) // the namespace's one TIME_WAIT
	stale, err := kerneltest.NewThread(t).Visit(ns.NetnsPath())
	if err != nil {
		t.Fatal(err)
	}
	if ino, _ := nspath.Inode(stale); ino == ns.ino {
		t.Fatalf("%s still leads to network namespace %d: the test tests nothing", stale, ns.ino)
	}
	h, err := openHandle(ns.ino, stale)
	if err != nil {
		t.Fatalf("openHandle(%d, %s): %v", ns.ino, stale, err)
	}
	defer h.Close()
	// A socket names the namespace it was made in (SIOCGSKNS).
	nsfd, err := unix.IoctlRetInt(h.diag, unix.SIOCGSKNS)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	err = unix.Fstat(nsfd, &st)
	unix.Close(nsfd)
	if err != nil {
		t.Fatal(err)
	}
	if uint32(st.Ino) != ns.ino {
		t.Errorf("openHandle(%d, %s): the handle is network namespace %d's", ns.ino, stale, st.Ino)
	}
	found, _, err := h.dumpTimeWait(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 1 {
		t.Errorf("the handle's sweep found %d TIME_WAITs, want the namespace's one", len(found))
	}
}
