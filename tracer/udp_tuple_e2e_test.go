package tracer

import (
	"net/netip"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/event"
)

// udpConversation is one DNS-like exchange, made the way dig and the bind9
// tools make it: the client binds port 0 on the wildcard address first, and
// only then connects to the server and sends its query. The server is bound
// to a port by number, receives with recvfrom and, if it answers, answers
// with sendto. An AF_INET6 client may talk to an IPv4 server through a
// v4-mapped address, as a dual-stack resolver does.
type udpConversation struct {
	name     string
	server   udpFamily
	clientAF int
}

var udpConversations = []udpConversation{
	{"ipv4", udpFamilies[0], unix.AF_INET},
	{"ipv6", udpFamilies[1], unix.AF_INET6},
	{"v4-mapped", udpFamilies[0], unix.AF_INET6},
}

// udpExchange is what a conversation did: both ends as getsockname shows
// them once connected (as ss shows them), unmapped, and both sockets'
// cookies, which pick out their events.
type udpExchange struct {
	client, server             netip.AddrPort
	clientCookie, serverCookie uint64
}

// run has the conversation with server, a socket of c.server's family bound
// to a port by number, which answers if answer is set; then it closes the
// client and the server, in that order.
func (c udpConversation) run(t *testing.T, server int, answer bool) udpExchange {
	t.Helper()
	defer unix.Close(server)
	sport := localPort(t, server)

	client, err := unix.Socket(c.clientAF, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(client)
	var wildcard, dst unix.Sockaddr
	if c.clientAF == unix.AF_INET {
		wildcard = &unix.SockaddrInet4{}
		dst = c.server.sockaddr(sport)
	} else {
		wildcard = &unix.SockaddrInet6{}
		// An IPv4 server is reached through its v4-mapped address.
		dst = &unix.SockaddrInet6{Port: int(sport), Addr: c.server.loopback.As16()}
	}
	if err := unix.Bind(client, wildcard); err != nil {
		t.Fatal(err)
	}
	if err := unix.Connect(client, dst); err != nil {
		t.Fatal(err)
	}
	ex := udpExchange{
		client: sockName(t, client), server: sockName(t, server),
		clientCookie: cookie(t, client), serverCookie: cookie(t, server),
	}

	query := []byte("what is example.com?")
	if err := unix.Send(client, query, 0); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 512)
	n, from, err := unix.Recvfrom(server, buf, 0)
	if err != nil || n != len(query) {
		t.Fatalf("server recv %d, %v", n, err)
	}
	if answer {
		if err := unix.Sendto(server, buf[:n], 0, from); err != nil {
			t.Fatal(err)
		}
		if _, err := unix.Read(client, buf); err != nil {
			t.Fatal(err)
		}
	}
	unix.Close(client)
	return ex
}

// sockName is fd's local end, unmapped.
func sockName(t *testing.T, fd int) netip.AddrPort {
	t.Helper()
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
	}
	t.Fatalf("unexpected sockaddr %T", sa)
	return netip.AddrPort{}
}

// freeUDPPort is a port that family's loopback address can bind by number.
func freeUDPPort(t *testing.T, fam udpFamily) uint16 {
	t.Helper()
	fd, port := fam.bound(t)
	unix.Close(fd)
	return port
}

// boundTo is a socket of family bound to port by number.
func boundTo(t *testing.T, fam udpFamily, port uint16) int {
	t.Helper()
	fd := fam.socket(t)
	if err := unix.Bind(fd, fam.sockaddr(port)); err != nil {
		unix.Close(fd)
		t.Fatalf("binding %v port %d: %v", fam.loopback, port, err)
	}
	return fd
}

// The exact events of a dig-like exchange: the client reports the local
// address connect() chose, not the wildcard it bound (what ss shows); the
// server's open waits for its peer, so open and close agree on the remote
// end and on the ephemeral flag, which is its peer's port's. A server that
// never answers has no known peer: no open, and a close with the remote
// unknown and not ephemeral.
func TestUDPBindThenConnect(t *testing.T) {
	r := startTracer(t, event.Filter{Protos: []event.Proto{event.ProtoUDP}})
	host := hostEphemeralRange(t)
	for _, conv := range udpConversations {
		for _, answer := range []bool{true, false} {
			name := conv.name + "/server answers"
			if !answer {
				name = conv.name + "/server never answers"
			}
			t.Run(name, func(t *testing.T) {
				fd, _ := conv.server.bound(t)
				ex := conv.run(t, fd, answer)
				wire := 6
				if ex.server.Addr().Is4() {
					wire = 4
				}
				ephemeral := host.Contains(ex.client.Port())
				if !ephemeral {
					t.Fatalf("the client's port %d is outside the host's ephemeral range %v", ex.client.Port(), host)
				}

				// Without the datagram hooks the client, connected, sending
				// without an address, is seen at its close alone; but a
				// dual-stack one's sends to a v4-mapped peer reach the send
				// hook with the address (udpv6_sendmsg hands them to
				// udp_sendmsg so), which opens it.
				wantClient := []string{"open", "close"}
				if !r.features.datagramHooks() && conv.clientAF == conv.server.af {
					wantClient = []string{"close"}
				}
				client := r.events.waitFor(t, len(wantClient), ofSocket(ex.clientCookie))
				wantServer := []string{"open", "close"}
				if !answer {
					wantServer = []string{"close"}
				}
				server := r.events.waitFor(t, len(wantServer), ofSocket(ex.serverCookie))
				if got := kinds(client); !slices.Equal(got, wantClient) {
					t.Fatalf("client events %v, want %v: %+v", got, wantClient, client)
				}
				if got := kinds(server); !slices.Equal(got, wantServer) {
					t.Fatalf("server events %v, want %v: %+v", got, wantServer, server)
				}
				for _, e := range client {
					key := "client " + e.Kind.String()
					check(t, key, "local", e.Local, ex.client)
					check(t, key, "remote", e.Remote, ex.server)
					check(t, key, "family", e.Family, wire)
					check(t, key, "direction", e.Direction, event.DirectionOutbound)
					check(t, key, "ephemeral", e.Ephemeral, true)
				}
				closed := client[len(client)-1]
				check(t, "client close", "connected", closed.Connected, true)
				check(t, "client close", "destinations", closed.Destinations, 1)
				peer, destinations := ex.client, uint32(1)
				if !answer {
					peer, destinations, ephemeral = netip.AddrPortFrom(unspecified(wire), 0), 0, false
				}
				for _, e := range server {
					key := "server " + e.Kind.String()
					check(t, key, "local", e.Local, ex.server)
					check(t, key, "remote", e.Remote, peer)
					check(t, key, "family", e.Family, wire)
					check(t, key, "direction", e.Direction, event.DirectionInbound)
					check(t, key, "ephemeral", e.Ephemeral, ephemeral)
				}
				last := server[len(server)-1]
				check(t, "server close", "destinations", last.Destinations, destinations)
				if r.requireCounted(t, &last) {
					check(t, "server close", "rx packets", last.RxPackets, 1)
				}
				check(t, "server close", "connected", last.Connected, false)
			})
		}
	}
	r.requireNothingLost(t)
}

func unspecified(family int) netip.Addr {
	if family == 4 {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}

// The filters are decided once the tuple is known: a client that binds
// before it connects passes a remote filter, a dual-stack client talking
// IPv4 passes --family 4, and a server whose peer's port is ephemeral passes
// --ephemeral-only. A socket whose remote end never became known (a server
// that never answers) is judged on what is known: --rport, --raddr and
// --ephemeral-only (for a server) never match it, the other filters do.
//
// Each case has the conversation twice. The second one's kept events come
// after every event of the first, so once they are in, the first one's
// events are all there is.
func TestUDPFiltersJudgeTheKnownTuple(t *testing.T) {
	requireRoot(t)
	var (
		v4, v6, mapped = udpConversations[0], udpConversations[1], udpConversations[2]
		both           = []string{"open", "close"}
		none           []string
	)
	ports := func(p uint16) []event.PortRange { return []event.PortRange{{Lo: p, Hi: p}} }
	cases := []struct {
		name       string
		conv       udpConversation
		answer     bool
		filter     func(sport uint16) event.Filter
		wantClient []string
		wantServer []string
	}{
		{
			name: "rport keeps a client that bound before it connected", conv: v4, answer: true,
			filter:     func(sport uint16) event.Filter { return event.Filter{RemotePorts: ports(sport)} },
			wantClient: both, wantServer: none,
		},
		{
			name: "raddr keeps both ends of an IPv6 exchange", conv: v6, answer: true,
			filter: func(uint16) event.Filter {
				return event.Filter{RemoteNets: []netip.Prefix{netip.MustParsePrefix("::1/128")}}
			},
			wantClient: both, wantServer: both,
		},
		{
			name: "ephemeral-only keeps a server whose peer's port is ephemeral", conv: v4, answer: true,
			filter:     func(uint16) event.Filter { return event.Filter{EphemeralOnly: true} },
			wantClient: both, wantServer: both,
		},
		{
			name: "family 4 keeps a dual-stack client talking IPv4", conv: mapped, answer: true,
			filter:     func(uint16) event.Filter { return event.Filter{Family: 4} },
			wantClient: both, wantServer: both,
		},
		{
			name: "lport keeps the server alone", conv: v4, answer: true,
			filter:     func(sport uint16) event.Filter { return event.Filter{LocalPorts: ports(sport)} },
			wantClient: none, wantServer: both,
		},
		{
			name: "lport keeps a server that never answered", conv: v4, answer: false,
			filter:     func(sport uint16) event.Filter { return event.Filter{LocalPorts: ports(sport)} },
			wantClient: none, wantServer: []string{"close"},
		},
		{
			name: "direction keeps a server that never answered", conv: v6, answer: false,
			filter:     func(uint16) event.Filter { return event.Filter{Direction: event.DirectionInbound} },
			wantClient: none, wantServer: []string{"close"},
		},
		{
			name: "rport never matches a server that never answered", conv: v4, answer: false,
			filter: func(uint16) event.Filter {
				// Every port, 0 included: an unknown remote port is not port 0.
				return event.Filter{RemotePorts: []event.PortRange{{Lo: 0, Hi: 65535}}}
			},
			wantClient: both, wantServer: none,
		},
		{
			name: "raddr never matches a server that never answered", conv: v4, answer: false,
			filter: func(uint16) event.Filter {
				return event.Filter{RemoteNets: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}}
			},
			wantClient: both, wantServer: none,
		},
		{
			name: "ephemeral-only leaves out a server that never answered", conv: v4, answer: false,
			filter:     func(uint16) event.Filter { return event.Filter{EphemeralOnly: true} },
			wantClient: both, wantServer: none,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sport := freeUDPPort(t, c.conv.server)
			f := c.filter(sport)
			f.Protos = []event.Proto{event.ProtoUDP}
			r := startTracer(t, f)
			// freeUDPPort's socket closed before the tracer started.
			first := c.conv.run(t, boundTo(t, c.conv.server, sport), c.answer)
			second := c.conv.run(t, boundTo(t, c.conv.server, sport), c.answer)

			wantClient := c.wantClient
			if len(wantClient) == 2 && !r.features.datagramHooks() && c.conv.clientAF == c.conv.server.af {
				wantClient = wantClient[1:] // its close alone: see TestUDPBindThenConnect
			}
			r.events.waitFor(t, len(wantClient), ofSocket(second.clientCookie))
			r.events.waitFor(t, len(c.wantServer), ofSocket(second.serverCookie))
			for i, run := range []udpExchange{first, second} {
				if got := kinds(r.events.matching(ofSocket(run.clientCookie))); !slices.Equal(got, wantClient) {
					t.Errorf("conversation %d: client events %v, want %v", i+1, got, wantClient)
				}
				if got := kinds(r.events.matching(ofSocket(run.serverCookie))); !slices.Equal(got, c.wantServer) {
					t.Errorf("conversation %d: server events %v, want %v", i+1, got, c.wantServer)
				}
			}
			r.requireNothingLost(t)
		})
	}
}
