package tracer

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/event"
)

// udpFamily is how the UDP tests make their sockets.
type udpFamily struct {
	name       string
	af         int
	loopback   netip.Addr
	wantFamily int
}

var udpFamilies = []udpFamily{
	{"ipv4", unix.AF_INET, netip.MustParseAddr("127.0.0.1"), 4},
	{"ipv6", unix.AF_INET6, netip.MustParseAddr("::1"), 6},
}

// The UDP tests use raw syscalls: each bind, connect and sendto is then
// exactly one, as the assertions count them.

func (f udpFamily) socket(t *testing.T) int {
	t.Helper()
	fd, err := unix.Socket(f.af, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

func (f udpFamily) sockaddr(port uint16) unix.Sockaddr {
	if f.af == unix.AF_INET {
		return &unix.SockaddrInet4{Port: int(port), Addr: f.loopback.As4()}
	}
	return &unix.SockaddrInet6{Port: int(port), Addr: f.loopback.As16()}
}

// bound is a socket bound to a port chosen by number, as servers do.
func (f udpFamily) bound(t *testing.T) (int, uint16) {
	t.Helper()
	for i := 0; i < 50; i++ {
		fd := f.socket(t)
		port := uint16(20000 + (os.Getpid()*7+i*131)%9000)
		if err := unix.Bind(fd, f.sockaddr(port)); err == nil {
			return fd, port
		}
		unix.Close(fd)
	}
	t.Fatal("no free UDP port to bind")
	return -1, 0
}

func localPort(t *testing.T, fd int) uint16 {
	t.Helper()
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return uint16(sa.Port)
	case *unix.SockaddrInet6:
		return uint16(sa.Port)
	}
	t.Fatalf("unexpected sockaddr %T", sa)
	return 0
}

// udpEvents selects the events of the UDP socket with this local port:
// IPv4 and IPv6 sockets may hold the same number.
func udpEvents(fam udpFamily, lport uint16, pid uint32) func(*event.Event) bool {
	return func(e *event.Event) bool {
		return e.Proto == event.ProtoUDP && e.Local.Port() == lport && e.PID == pid && e.Family == fam.wantFamily
	}
}

// cookie is fd's socket cookie, as the kernel's events carry it.
func cookie(t *testing.T, fd int) uint64 {
	t.Helper()
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// ofSocket selects the UDP events of the socket with this cookie.
func ofSocket(cookie uint64) func(*event.Event) bool {
	return func(e *event.Event) bool { return e.Proto == event.ProtoUDP && e.Cookie == cookie }
}

// kinds lists the events' kinds, in order.
func kinds(events []event.Event) []string {
	var k []string
	for _, e := range events {
		k = append(k, e.Kind.String())
	}
	return k
}

// udpWant is what a UDP test expects of one socket's close event.
type udpWant struct {
	direction    event.Direction
	remote       netip.AddrPort
	connected    bool
	destinations uint32
	txPackets    uint32
	rxPackets    uint32
	txBytes      uint64
	rxBytes      uint64
}

func checkUDPClose(t *testing.T, r *running, e event.Event, fam udpFamily, want udpWant) {
	t.Helper()
	key := fmt.Sprintf("udp close %v", e.Local)
	check(t, key, "kind", e.Kind, event.KindClose)
	check(t, key, "direction", e.Direction, want.direction)
	check(t, key, "remote", e.Remote, want.remote)
	check(t, key, "connected", e.Connected, want.connected)
	check(t, key, "destinations", e.Destinations, want.destinations)
	if r.requireCounted(t, &e) {
		check(t, key, "tx packets", e.TxPackets, want.txPackets)
		check(t, key, "rx packets", e.RxPackets, want.rxPackets)
		check(t, key, "tx bytes", e.TxBytes, want.txBytes)
		check(t, key, "rx bytes", e.RxBytes, want.rxBytes)
	}
	check(t, key, "family", e.Family, fam.wantFamily)
	check(t, key, "pid source", e.PIDSource, event.PIDSourceSocket)
	check(t, key, "comm", e.Comm.String(), ownComm(t))
	check(t, key, "pre-existing", e.PreExisting, false)
	if e.Duration() <= 0 {
		t.Errorf("%s: duration %v, want > 0", key, e.Duration())
	}
}

func TestUDPLifetimes(t *testing.T) {
	r := startTracer(t, event.Filter{Protos: []event.Proto{event.ProtoUDP}})
	pid := uint32(os.Getpid())
	msg := []byte("what is example.com?")
	n := uint64(len(msg))

	for _, fam := range udpFamilies {
		t.Run(fam.name+"/connected client and bound server", func(t *testing.T) {
			server, sport := fam.bound(t)
			client := fam.socket(t)
			if err := unix.Connect(client, fam.sockaddr(sport)); err != nil {
				t.Fatal(err)
			}
			cport := localPort(t, client)
			if err := unix.Send(client, msg, 0); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 512)
			got, from, err := unix.Recvfrom(server, buf, 0)
			if err != nil || got != len(msg) {
				t.Fatalf("server recv %d, %v", got, err)
			}
			if err := unix.Sendto(server, buf[:got], 0, from); err != nil {
				t.Fatal(err)
			}
			if _, err := unix.Read(client, buf); err != nil {
				t.Fatal(err)
			}
			unix.Close(client)
			unix.Close(server)

			serverAddr := netip.AddrPortFrom(fam.loopback, sport)
			clientAddr := netip.AddrPortFrom(fam.loopback, cport)
			ev := r.events.waitFor(t, 2, udpEvents(fam, cport, pid))
			check(t, "client", "events", len(ev), 2)
			check(t, "client open", "kind", ev[0].Kind, event.KindOpen)
			check(t, "client open", "direction", ev[0].Direction, event.DirectionOutbound)
			checkUDPClose(t, r, ev[len(ev)-1], fam, udpWant{
				direction: event.DirectionOutbound, remote: serverAddr, connected: true, destinations: 1,
				txPackets: 1, rxPackets: 1, txBytes: n, rxBytes: n,
			})
			ev = r.events.waitFor(t, 2, udpEvents(fam, sport, pid))
			check(t, "server", "events", len(ev), 2)
			check(t, "server open", "kind", ev[0].Kind, event.KindOpen)
			check(t, "server open", "direction", ev[0].Direction, event.DirectionInbound)
			// The server answered with sendto: its reply went to the client.
			checkUDPClose(t, r, ev[len(ev)-1], fam, udpWant{
				direction: event.DirectionInbound, remote: clientAddr, destinations: 1,
				txPackets: 1, rxPackets: 1, txBytes: n, rxBytes: n,
			})
		})

		t.Run(fam.name+"/connected, never used", func(t *testing.T) {
			server, sport := fam.bound(t)
			defer unix.Close(server)
			client := fam.socket(t)
			if err := unix.Connect(client, fam.sockaddr(sport)); err != nil {
				t.Fatal(err)
			}
			cport := localPort(t, client)
			unix.Close(client)

			// Without the datagram hooks connect()'s return opens it, and
			// names who connected it; with them, nothing does until its
			// close, which names who closed it.
			want, wantSource := 1, event.PIDSourceClose
			if !r.features.datagramHooks() {
				want, wantSource = 2, event.PIDSourceSocket
			}
			ev := r.events.waitFor(t, want, udpEvents(fam, cport, pid))
			check(t, "unused", "events", len(ev), want)
			e := ev[len(ev)-1]
			check(t, "unused", "kind", e.Kind, event.KindClose)
			check(t, "unused", "remote", e.Remote, netip.AddrPortFrom(fam.loopback, sport))
			check(t, "unused", "connected", e.Connected, true)
			check(t, "unused", "pid source", e.PIDSource, wantSource)
			check(t, "unused", "direction", e.Direction, event.DirectionOutbound)
			check(t, "unused", "family", e.Family, fam.wantFamily)
			check(t, "unused", "tx packets", e.TxPackets, 0)
		})

		t.Run(fam.name+"/unconnected client, two destinations", func(t *testing.T) {
			a, aport := fam.bound(t)
			b, bport := fam.bound(t)
			defer unix.Close(a)
			defer unix.Close(b)
			client := fam.socket(t)
			for _, port := range []uint16{aport, bport, aport} {
				if err := unix.Sendto(client, msg, 0, fam.sockaddr(port)); err != nil {
					t.Fatal(err)
				}
			}
			cport := localPort(t, client)
			unix.Close(client)

			ev := r.events.waitFor(t, 2, udpEvents(fam, cport, pid))
			check(t, "client", "events", len(ev), 2)
			check(t, "client open", "kind", ev[0].Kind, event.KindOpen)
			checkUDPClose(t, r, ev[len(ev)-1], fam, udpWant{
				direction: event.DirectionOutbound, remote: netip.AddrPortFrom(fam.loopback, aport), destinations: 2,
				txPackets: 3, txBytes: 3 * n,
			})
		})
	}
	r.requireNothingLost(t)
}

// 1,000 DNS-like query sockets from another process: each is reported
// exactly once, with its port and the process's pid, and nothing is lost.
func TestUDPQueryBurst(t *testing.T) {
	const queries = 1000
	r := startTracer(t, event.Filter{Protos: []event.Proto{event.ProtoUDP}})
	server, sport := udpFamilies[0].bound(t)
	go udpEcho(server)
	defer func() {
		unix.Shutdown(server, unix.SHUT_RDWR) // wakes the echo's recvfrom
		unix.Close(server)
	}()

	client := startHelper(t, "udpclient", fmt.Sprintf("%d@127.0.0.1:%d", queries, sport), nil)
	truth := map[uint16]int{}
	for i := 0; i < queries; i++ {
		p, err := strconv.Atoi(client.line(t))
		if err != nil {
			t.Fatal(err)
		}
		truth[uint16(p)]++
	}
	isQuery := func(e *event.Event) bool {
		return e.Kind == event.KindClose && e.Proto == event.ProtoUDP && e.PID == client.pid()
	}
	got := r.events.waitFor(t, queries, isQuery)
	seen := map[uint16]int{}
	var short []string // sockets a skipped program run may have left uncounted
	for _, e := range got {
		counted := r.requireCounted(t, &e)
		switch {
		case e.Remote.Port() != sport || counted && (e.TxPackets > 1 || e.RxPackets > 1) || !e.Connected:
			t.Errorf("query socket %v: remote %v, %d sent, %d received, connected %v; want the server, 1, 1, true",
				e.Local, e.Remote, e.TxPackets, e.RxPackets, e.Connected)
		case counted && (e.TxPackets < 1 || e.RxPackets < 1):
			short = append(short, fmt.Sprintf("%v: %d sent, %d received", e.Local, e.TxPackets, e.RxPackets))
		}
		seen[e.Local.Port()]++
	}
	// A datagram the kernel's recursion guard kept a program from seeing
	// is not counted, but the skipped run is: each short socket needs one.
	if len(short) > 0 {
		s, err := r.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if s.SkippedRuns < uint64(len(short)) {
			t.Errorf("%d query sockets counted short, but %d skipped program runs counted: %v", len(short), s.SkippedRuns, short)
		} else {
			t.Logf("%d query sockets counted short, covered by %d skipped program runs: %v", len(short), s.SkippedRuns, short)
		}
	}
	for port, n := range truth {
		if seen[port] != n {
			t.Errorf("port %d: %d query sockets, %d close events", port, n, seen[port])
		}
	}
	if len(got) != queries {
		t.Errorf("%d close events, want %d", len(got), queries)
	}
	r.requireNothingLost(t)
}

// udpEcho answers every datagram until the socket closes.
func udpEcho(fd int) {
	buf := make([]byte, 2048)
	for {
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if err != nil || from == nil {
			return
		}
		unix.Sendto(fd, buf[:n], 0, from)
	}
}
