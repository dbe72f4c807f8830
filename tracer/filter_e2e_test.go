package tracer

import (
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/event"
)

// dialer makes one echo connection to a helper server and closes it, the
// client first. It returns the client's ends.
type dialer func(t *testing.T) (local, remote netip.AddrPort)

func echoTo(network string, server netip.AddrPort, from netip.AddrPort) dialer {
	return func(t *testing.T) (netip.AddrPort, netip.AddrPort) {
		t.Helper()
		d := net.Dialer{}
		if from.IsValid() {
			d.LocalAddr = net.TCPAddrFromAddrPort(from)
		}
		c, err := d.Dial(network, server.String())
		if err != nil {
			t.Fatalf("dial %v: %v", server, err)
		}
		buf := make([]byte, payload)
		if _, err := c.Write(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		local, remote := addrPort(t, c.LocalAddr()), addrPort(t, c.RemoteAddr())
		c.Close()
		return local, remote
	}
}

// Every filter leaves out exactly what it should, in the kernel, and keeps
// the rest. A second connection that the filter keeps shows that the
// tracer was working while the first one's events were left out.
func TestFilters(t *testing.T) {
	requireRoot(t)
	server := startHelper(t, "server", "pl-server", nil) // IPv4, named pl-server
	port, err := strconv.Atoi(server.line(t))
	if err != nil {
		t.Fatal(err)
	}
	v4 := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
	server6 := echoServer6(t)
	fixedPort := freePortOutside(t, hostEphemeralRange(t))

	var (
		toServer  = echoTo("tcp4", v4, netip.AddrPort{})
		toServer6 = echoTo("tcp6", server6, netip.AddrPort{})
		all       = []string{"open/outbound", "open/inbound", "close/outbound", "close/inbound"}
		inbound   = []string{"open/inbound", "close/inbound"}
		outbound  = []string{"open/outbound", "close/outbound"}
	)
	cases := []struct {
		name     string
		filter   event.Filter
		conn     dialer
		want     []string // the events of conn that pass
		sentinel dialer   // nil: conn again
		sentWant []string // nil: want
	}{
		{name: "pid keeps the server side", filter: event.Filter{PID: server.pid()}, conn: toServer, want: inbound},
		{name: "comm keeps the server side", filter: event.Filter{Comm: "pl-server"}, conn: toServer, want: inbound},
		{name: "lport keeps the server side", filter: event.Filter{LocalPorts: []event.PortRange{{Lo: v4.Port(), Hi: v4.Port()}}}, conn: toServer, want: inbound},
		{name: "lport range", filter: event.Filter{LocalPorts: []event.PortRange{{Lo: 1, Hi: 2}, {Lo: v4.Port() - 1, Hi: v4.Port() + 1}}}, conn: toServer, want: inbound},
		{name: "rport keeps the client side", filter: event.Filter{RemotePorts: []event.PortRange{{Lo: v4.Port(), Hi: v4.Port()}}}, conn: toServer, want: outbound},
		{
			name:   "raddr keeps the side whose peer is in the network",
			filter: event.Filter{RemoteNets: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}},
			conn:   echoTo("tcp4", v4, netip.MustParseAddrPort("127.0.0.2:0")),
			want:   outbound,
		},
		{
			name:     "raddr leaves out other families",
			filter:   event.Filter{RemoteNets: []netip.Prefix{netip.MustParsePrefix("::1/128")}},
			conn:     toServer,
			sentinel: toServer6, sentWant: all,
		},
		{name: "family 6 leaves out IPv4", filter: event.Filter{Family: 6}, conn: toServer, sentinel: toServer6, sentWant: all},
		{name: "family 4 leaves out IPv6", filter: event.Filter{Family: 4}, conn: toServer6, sentinel: toServer, sentWant: all},
		{name: "direction inbound", filter: event.Filter{Direction: event.DirectionInbound}, conn: toServer, want: inbound},
		{name: "direction outbound", filter: event.Filter{Direction: event.DirectionOutbound}, conn: toServer, want: outbound},
		{name: "events close", filter: event.Filter{Kinds: []event.Kind{event.KindClose}}, conn: toServer, want: []string{"close/outbound", "close/inbound"}},
		{name: "min-duration leaves out short closes", filter: event.Filter{MinDuration: time.Hour}, conn: toServer, want: []string{"open/outbound", "open/inbound"}},
		{
			name:     "ephemeral-only leaves out fixed ports",
			filter:   event.Filter{EphemeralOnly: true},
			conn:     echoTo("tcp4", v4, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), fixedPort)),
			sentinel: toServer, sentWant: all,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := startTracer(t, c.filter)
			local, remote := c.conn(t)
			sentinel, sentWant := c.sentinel, c.sentWant
			if sentinel == nil {
				sentinel, sentWant = c.conn, c.want
			}
			sLocal, sRemote := sentinel(t)
			if len(sentWant) == 0 {
				t.Fatal("a sentinel must pass the filter")
			}
			_, sentMissing := r.waitCounted(t, len(sentWant), ofConn(sLocal, sRemote))
			_, missing := r.waitCounted(t, len(c.want), ofConn(local, remote))

			if got := eventKeys(r.events.matching(ofConn(local, remote))); !keysWanted(got, c.want, missing) {
				t.Errorf("events %v, want %v", got, sorted(c.want))
			}
			if got := eventKeys(r.events.matching(ofConn(sLocal, sRemote))); !keysWanted(got, sentWant, sentMissing) {
				t.Errorf("sentinel events %v, want %v", got, sorted(sentWant))
			}
		})
	}
}

// hostEphemeralRange is net.ipv4.ip_local_port_range of the test's own
// network namespace, now.
func hostEphemeralRange(t *testing.T) event.PortRange {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		t.Fatalf("ip_local_port_range holds %q, want two ports", b)
	}
	r, err := event.ParsePortRange(f[0] + "-" + f[1])
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// freePortOutside finds a local port outside the ephemeral range that no
// socket holds, not even in TIME_WAIT from an earlier run.
func freePortOutside(t *testing.T, ephemeral event.PortRange) uint16 {
	t.Helper()
	lo, hi := uint16(1024), ephemeral.Lo-1
	if ephemeral.Lo <= 2048 {
		lo, hi = ephemeral.Hi+1, 65535
	}
	if lo >= hi {
		t.Fatalf("ip_local_port_range %v leaves no port to test --ephemeral-only with", ephemeral)
	}
	return freePortIn(t, event.PortRange{Lo: lo, Hi: hi})
}

// freePortIn finds a local port in r that no socket holds, not even in
// TIME_WAIT from an earlier run.
func freePortIn(t *testing.T, r event.PortRange) uint16 {
	t.Helper()
	for i := 0; i < 100; i++ {
		p := r.Lo + uint16(rand.IntN(int(r.Hi-r.Lo)))
		// A plain bind, without the SO_REUSEADDR that net.Listen sets, fails
		// as the dial's bind would.
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		err = unix.Bind(fd, &unix.SockaddrInet4{Port: int(p), Addr: [4]byte{127, 0, 0, 1}})
		unix.Close(fd)
		if err == nil {
			return p
		}
	}
	t.Fatalf("no free port in %v", r)
	return 0
}

func eventKeys(events []event.Event) []string {
	var keys []string
	for _, e := range events {
		keys = append(keys, e.Kind.String()+"/"+e.Direction.String())
	}
	return sorted(keys)
}

// keysWanted reports whether the event keys got are want's, or, with
// missing events counted as skipped (waitCounted), want's less at most
// missing of them. An event the filter should have left out fails either way.
func keysWanted(got, want []string, missing int) bool {
	want = sorted(want)
	if missing == 0 {
		return slices.Equal(got, want)
	}
	left := slices.Clone(want)
	for _, k := range got {
		i := slices.Index(left, k)
		if i < 0 {
			return false
		}
		left = slices.Delete(left, i, i+1)
	}
	return len(left) <= missing
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// echoServer6 is an in-process echo server on [::1], for family cases.
func echoServer6(t *testing.T) netip.AddrPort {
	t.Helper()
	return inProcessEcho(t, "tcp6", "[::1]:0")
}

// inProcessEcho listens on addr and echoes payload bytes on every
// connection, then waits for the client to close, until the test ends.
func inProcessEcho(t *testing.T, network, addr string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, payload)
				if _, err := io.ReadFull(c, buf); err == nil {
					c.Write(buf)
					c.Read(buf)
				}
			}()
		}
	}()
	return addrPort(t, ln.Addr())
}
