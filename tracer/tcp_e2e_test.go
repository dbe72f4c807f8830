package tracer

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/event"
)

const payload = 100

// tcpFamily is how a test connection is made.
type tcpFamily struct {
	name            string
	listen, dialNet string // networks for net.Listen and net.Dial
	host            string // the address to listen on
	dialHost        string // the address to dial
	wantFamily      int
	wantAF          int // the client socket's family in the kernel
}

// dial connects to port on fam.dialHost. Go's net package dials a
// v4-mapped address from an AF_INET socket, so that case uses the syscalls.
func (fam tcpFamily) dial(port uint16) (net.Conn, error) {
	if fam.dialHost != "::ffff:127.0.0.1" {
		return net.Dial(fam.dialNet, net.JoinHostPort(fam.dialHost, fmt.Sprint(port)))
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	sa := &unix.SockaddrInet6{Port: int(port), Addr: netip.MustParseAddr(fam.dialHost).As16()}
	if err := unix.Connect(fd, sa); err != nil {
		unix.Close(fd)
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "v4-mapped")
	defer f.Close()
	return net.FileConn(f)
}

var tcpFamilies = []tcpFamily{
	{"ipv4", "tcp4", "tcp4", "127.0.0.1", "127.0.0.1", 4, unix.AF_INET},
	{"ipv6", "tcp6", "tcp6", "::1", "::1", 6, unix.AF_INET6},
	// An AF_INET6 socket talking to an IPv4 peer: IPv4 on the wire.
	{"v4-mapped", "tcp", "tcp6", "::", "::ffff:127.0.0.1", 4, unix.AF_INET6},
}

// pair is one loopback connection and both of its ends.
type pair struct {
	client, server *net.TCPConn
	local, remote  netip.AddrPort // as the client sees them
}

// connect makes one connection to a listener of its own, closed once the
// connection is accepted.
func connect(t *testing.T, fam tcpFamily) pair {
	t.Helper()
	ln := listen(t, fam)
	defer ln.Close()
	return connectTo(t, fam, ln)
}

func listen(t *testing.T, fam tcpFamily) net.Listener {
	t.Helper()
	ln, err := net.Listen(fam.listen, net.JoinHostPort(fam.host, "0"))
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	return ln
}

func connectTo(t *testing.T, fam tcpFamily, ln net.Listener) pair {
	t.Helper()
	port := ln.Addr().(*net.TCPAddr).Port
	c, err := fam.dial(uint16(port))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	p := pair{client: c.(*net.TCPConn), server: s.(*net.TCPConn),
		local: addrPort(t, c.LocalAddr()), remote: addrPort(t, c.RemoteAddr())}
	if af := socketFamily(t, p.client); af != fam.wantAF {
		t.Fatalf("client socket family %d, want %d: the test does not test what it says", af, fam.wantAF)
	}
	return p
}

// connCookie is c's socket cookie (SO_COOKIE), which the kernel gives the
// socket now if it had none.
func connCookie(t *testing.T, c *net.TCPConn) uint64 {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v uint64
	var gerr error
	if err := raw.Control(func(fd uintptr) { v, gerr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}

func socketFamily(t *testing.T, c *net.TCPConn) int {
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var sa unix.Sockaddr
	raw.Control(func(fd uintptr) { sa, err = unix.Getsockname(int(fd)) })
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := sa.(*unix.SockaddrInet6); ok {
		return unix.AF_INET6
	}
	return unix.AF_INET
}

// echo sends payload bytes from the client and back from the server.
func (p pair) echo(t *testing.T) {
	t.Helper()
	msg := bytes.Repeat([]byte("x"), payload)
	buf := make([]byte, payload)
	if _, err := p.client.Write(msg); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(p.server, buf); err != nil {
		t.Fatal(err)
	}
	if _, err := p.server.Write(buf); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(p.client, buf); err != nil {
		t.Fatal(err)
	}
}

// closeFirst closes one end, waits for the other to see it, closes that.
func closeFirst(t *testing.T, first, second *net.TCPConn, reset bool) {
	t.Helper()
	if reset {
		first.SetLinger(0) // close() then sends RST instead of FIN
	}
	first.Close()
	second.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := second.Read(make([]byte, 1))
	switch {
	case reset && !errors.Is(err, syscall.ECONNRESET):
		t.Fatalf("after a reset the peer read %v, want ECONNRESET", err)
	case !reset && err != io.EOF:
		t.Fatalf("after a close the peer read %v, want EOF", err)
	}
	second.Close()
}

// lifetime is what a test expects of one close event.
type lifetime struct {
	closedBy event.ClosedBy
	reset    bool
	timeWait bool
}

func TestTCPLifetimes(t *testing.T) {
	r := startTracer(t, event.Filter{})
	pid := uint32(os.Getpid())
	comm := ownComm(t)

	scenarios := []struct {
		name    string
		end     func(t *testing.T, p pair)
		out, in lifetime
	}{
		{
			name: "client closes first",
			end:  func(t *testing.T, p pair) { closeFirst(t, p.client, p.server, false) },
			out:  lifetime{closedBy: event.ClosedByLocal, timeWait: true},
			in:   lifetime{closedBy: event.ClosedByRemote},
		},
		{
			name: "server closes first",
			end:  func(t *testing.T, p pair) { closeFirst(t, p.server, p.client, false) },
			out:  lifetime{closedBy: event.ClosedByRemote},
			in:   lifetime{closedBy: event.ClosedByLocal, timeWait: true},
		},
		{
			name: "client resets",
			end:  func(t *testing.T, p pair) { closeFirst(t, p.client, p.server, true) },
			out:  lifetime{closedBy: event.ClosedByLocal, reset: true},
			in:   lifetime{closedBy: event.ClosedByRemote, reset: true},
		},
		{
			name: "server resets",
			end:  func(t *testing.T, p pair) { closeFirst(t, p.server, p.client, true) },
			out:  lifetime{closedBy: event.ClosedByRemote, reset: true},
			in:   lifetime{closedBy: event.ClosedByLocal, reset: true},
		},
	}
	for _, fam := range tcpFamilies {
		for _, sc := range scenarios {
			t.Run(fam.name+"/"+sc.name, func(t *testing.T) {
				before := time.Now()
				p := connect(t, fam)
				// Asked after the tracer read them: before Linux 5.12 the
				// tracer cannot ask, and asking gives a socket that has
				// none its cookie.
				outCookie, inCookie := connCookie(t, p.client), connCookie(t, p.server)
				p.echo(t)
				sc.end(t, p)
				after := time.Now()

				got := r.events.waitFor(t, 4, ofConn(p.local, p.remote))
				if len(got) != 4 {
					t.Fatalf("got %d events, want open and close for each side: %+v", len(got), got)
				}
				seen := map[string]bool{}
				for i := range got {
					e := &got[i]
					key := e.Kind.String() + "/" + e.Direction.String()
					if seen[key] {
						t.Fatalf("%s twice: %+v", key, got)
					}
					seen[key] = true

					out := e.Direction == event.DirectionOutbound
					wantLocal, wantRemote, wantSource, wantCookie := p.local, p.remote, event.PIDSourceConnect, outCookie
					if !out {
						wantLocal, wantRemote, wantSource, wantCookie = p.remote, p.local, event.PIDSourceListener, inCookie
					}
					// The cookie sock_diag and SO_COOKIE show, on every kernel.
					check(t, key, "cookie", e.Cookie, wantCookie)
					check(t, key, "local", e.Local, wantLocal)
					check(t, key, "remote", e.Remote, wantRemote)
					check(t, key, "pid", e.PID, pid)
					check(t, key, "comm", e.Comm.String(), comm)
					check(t, key, "pid source", e.PIDSource, wantSource)
					check(t, key, "uid", e.UID, uint32(os.Getuid()))
					check(t, key, "family", e.Family, fam.wantFamily)
					check(t, key, "ephemeral", e.Ephemeral, true)
					check(t, key, "pre-existing", e.PreExisting, false)
					if e.Start.Before(before) || e.Time.After(after.Add(time.Second)) || e.Time.Before(e.Start) {
						t.Errorf("%s: start %v and time %v are not within the test's %v..%v", key, e.Start, e.Time, before, after)
					}

					switch e.Kind {
					case event.KindOpen:
						if out && e.ConnectLatency() <= 0 {
							t.Errorf("%s: connect latency %v, want > 0", key, e.ConnectLatency())
						}
					case event.KindClose:
						want := sc.out
						if !out {
							want = sc.in
						}
						check(t, key, "closed by", e.ClosedBy, want.closedBy)
						check(t, key, "reset", e.Reset, want.reset)
						check(t, key, "time wait", e.TimeWait, want.timeWait)
						if e.Duration() <= 0 {
							t.Errorf("%s: duration %v, want > 0", key, e.Duration())
						}
						// The kernel's counts include one for a SYN and a FIN.
						if e.TxBytes < payload || e.TxBytes > payload+2 || e.RxBytes < payload || e.RxBytes > payload+2 {
							t.Errorf("%s: tx %d rx %d bytes, want %d (+2 for SYN and FIN)", key, e.TxBytes, e.RxBytes, payload)
						}
					default:
						t.Errorf("unexpected %s", key)
					}
				}
				if len(seen) != 4 {
					t.Errorf("got %v, want open and close for each side", seen)
				}
			})
		}
	}
	r.requireNothingLost(t)
}

func TestTCPConnectRefused(t *testing.T) {
	r := startTracer(t, event.Filter{})
	for _, fam := range tcpFamilies {
		t.Run(fam.name, func(t *testing.T) {
			// A port that was just free: listen, note it, close.
			ln, err := net.Listen(fam.listen, net.JoinHostPort(fam.host, "0"))
			if err != nil {
				t.Fatal(err)
			}
			port := uint16(ln.Addr().(*net.TCPAddr).Port)
			ln.Close()

			_, err = fam.dial(port)
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("dial: %v, want ECONNREFUSED", err)
			}
			dst := netip.AddrPortFrom(netip.MustParseAddr(fam.dialHost).Unmap(), port)
			got := r.events.waitFor(t, 1, func(e *event.Event) bool { return e.Remote == dst && e.PID == uint32(os.Getpid()) })
			if len(got) != 1 {
				t.Fatalf("got %d events for %v, want one connect_failed: %+v", len(got), dst, got)
			}
			e := got[0]
			check(t, "connect_failed", "kind", e.Kind, event.KindConnectFailed)
			check(t, "connect_failed", "reason", e.Reason(), "refused")
			check(t, "connect_failed", "errno", e.Errno, unix.ECONNREFUSED)
			check(t, "connect_failed", "direction", e.Direction, event.DirectionOutbound)
			check(t, "connect_failed", "pid source", e.PIDSource, event.PIDSourceConnect)
			check(t, "connect_failed", "family", e.Family, fam.wantFamily)
			if e.Local.Port() == 0 {
				t.Errorf("local port 0: a refused connect had a port")
			}
		})
	}
}

// A connection opened before the tracer started is still reported when it
// closes, with its owner from /proc, its direction from the listener, and
// the cookie sock_diag shows.
func TestTCPPreExisting(t *testing.T) {
	requireRoot(t)
	ln := listen(t, tcpFamilies[0]) // open while tracing starts: it tells the direction
	defer ln.Close()
	p := connectTo(t, tcpFamilies[0], ln)

	r := startTracer(t, event.Filter{})
	// No one asked for these sockets' cookies before the tracer adopted
	// them: asked now, they are the ones the tracer must have read.
	outCookie, inCookie := connCookie(t, p.client), connCookie(t, p.server)
	p.echo(t)
	closeFirst(t, p.client, p.server, false)

	got := r.events.waitFor(t, 2, ofConn(p.local, p.remote))
	if len(got) != 2 {
		t.Fatalf("got %d events, want a close for each side: %+v", len(got), got)
	}
	for _, e := range got {
		key := e.Direction.String() + " " + e.Local.String()
		check(t, key, "kind", e.Kind, event.KindClose)
		check(t, key, "pre-existing", e.PreExisting, true)
		check(t, key, "start", e.Start, time.Time{})
		check(t, key, "pid", e.PID, uint32(os.Getpid()))
		check(t, key, "pid source", e.PIDSource, event.PIDSourceFDOwner)
		check(t, key, "comm", e.Comm.String(), ownComm(t))
		switch e.Local {
		case p.local:
			check(t, key, "cookie", e.Cookie, outCookie)
			check(t, key, "direction", e.Direction, event.DirectionOutbound)
			check(t, key, "closed by", e.ClosedBy, event.ClosedByLocal)
			check(t, key, "time wait", e.TimeWait, true)
		case p.remote:
			check(t, key, "cookie", e.Cookie, inCookie)
			check(t, key, "direction", e.Direction, event.DirectionInbound)
			check(t, key, "closed by", e.ClosedBy, event.ClosedByRemote)
		default:
			t.Errorf("unexpected event %+v", e)
		}
	}
}

func check[T comparable](t *testing.T, what, field string, got, want T) {
	t.Helper()
	if got != want {
		t.Errorf("%s: %s is %v, want %v", what, field, got, want)
	}
}

func ownComm(t *testing.T) string {
	b, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
