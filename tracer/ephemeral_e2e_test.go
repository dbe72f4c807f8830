package tracer

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"syscall"
	"testing"

	"github.com/portlife/portlife/internal/event"
	"github.com/portlife/portlife/internal/kerneltest"
)

// Ephemeral is judged against the range of the socket's own network
// namespace. A namespace whose range lies outside the host's gets ports that
// are ephemeral there and not on the host: its connections must be
// ephemeral, and a host connection from a port of that same range, bound by
// number, must not. Judged by the host's range alone, both would be false.
func TestEphemeralPerNetns(t *testing.T) {
	host := hostEphemeralRange(t)
	ns := rangeOutside(t, host)
	all := startTracer(t, event.Filter{})
	only := startTracer(t, event.Filter{EphemeralOnly: true})
	hostNetns := netnsInode(t, "/proc/self/ns/net")
	loopback := netip.MustParseAddr("127.0.0.1")

	// On the host, first: a connection from a port of the namespace's range.
	server := startHelper(t, "server", "", nil)
	serverPort, err := strconv.Atoi(server.line(t))
	if err != nil {
		t.Fatal(err)
	}
	from := netip.AddrPortFrom(loopback, freePortIn(t, ns))
	hLocal, hRemote := echoTo("tcp4", netip.AddrPortFrom(loopback, uint16(serverPort)), from)(t)
	isHost := func(e *event.Event) bool { return ofConn(hLocal, hRemote)(e) && e.NetNS == hostNetns }
	hostEvents := all.events.waitFor(t, 4, isHost)
	checkEphemeral(t, "host, port bound by number", hostEvents, false)

	// In the namespace: a TCP connection and a connected UDP socket, whose
	// ports the kernel chose from the namespace's range.
	h := startHelper(t, "netnsconns", fmt.Sprintf("%d %d", ns.Lo, ns.Hi),
		&syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET})
	var tcpPort, udpPort uint16
	if _, err := fmt.Sscan(h.line(t), &tcpPort, &udpPort); err != nil {
		t.Fatalf("helper's ports: %v", err)
	}
	for _, p := range []uint16{tcpPort, udpPort} {
		if !ns.Contains(p) || host.Contains(p) {
			t.Fatalf("the namespace's connect got port %d, want one in its range %v and outside the host's %v", p, ns, host)
		}
	}
	isTCP := func(e *event.Event) bool {
		return e.PID == h.pid() && e.Proto == event.ProtoTCP && (e.Local.Port() == tcpPort || e.Remote.Port() == tcpPort)
	}
	isUDP := func(e *event.Event) bool {
		return e.PID == h.pid() && e.Proto == event.ProtoUDP && e.Local.Port() == udpPort
	}
	wantTCP := []string{"close/inbound", "close/outbound", "open/inbound", "open/outbound"}
	wantUDP := []string{"close/outbound", "open/outbound"}
	for _, r := range []struct {
		name string
		*running
	}{{"every connection", all}, {"ephemeral-only", only}} {
		tcp := r.events.waitFor(t, len(wantTCP), isTCP)
		udp := r.events.waitFor(t, len(wantUDP), isUDP)
		if got := eventKeys(tcp); !slices.Equal(got, wantTCP) {
			t.Errorf("%s: the namespace's TCP events %v, want %v", r.name, got, wantTCP)
		}
		if got := eventKeys(udp); !slices.Equal(got, wantUDP) {
			t.Errorf("%s: the namespace's UDP events %v, want %v", r.name, got, wantUDP)
		}
		checkEphemeral(t, r.name+", in the namespace", append(tcp, udp...), true)
		for _, e := range append(tcp, udp...) {
			if e.NetNS == hostNetns {
				t.Errorf("%s: %v %v event in the host's netns %d, want the helper's", r.name, e.Proto, e.Kind, e.NetNS)
			}
		}
	}
	// The namespace's events came after all of the host connection's, so
	// --ephemeral-only has had every chance to report it.
	if got := only.events.matching(isHost); len(got) != 0 {
		t.Errorf("ephemeral-only reported the host connection from a port outside the host's range: %+v", got)
	}
	all.requireNothingLost(t)
	only.requireNothingLost(t)
}

func checkEphemeral(t *testing.T, what string, events []event.Event, want bool) {
	t.Helper()
	for _, e := range events {
		key := fmt.Sprintf("%s: %v %v/%v %v -> %v", what, e.Proto, e.Kind, e.Direction, e.Local, e.Remote)
		check(t, key, "ephemeral", e.Ephemeral, want)
	}
}

// rangeOutside is a port range for a namespace of the test's own that does
// not overlap the host's.
func rangeOutside(t *testing.T, host event.PortRange) event.PortRange {
	t.Helper()
	for _, r := range []event.PortRange{{Lo: 10000, Hi: 10999}, {Lo: 20000, Hi: 20999}, {Lo: 61000, Hi: 61999}, {Lo: 2000, Hi: 2999}} {
		if r.Hi < host.Lo || r.Lo > host.Hi {
			return r
		}
	}
	t.Fatalf("the host's ip_local_port_range %v leaves no room for another", host)
	return event.PortRange{}
}

// netnsConns runs in a network namespace of its own, whose ephemeral range
// is arg ("10000 10999"). Over its loopback it makes one TCP echo
// connection, the client closing first, and one connected UDP query, prints
// the local port the kernel chose for each, and exits when stdin closes.
func netnsConns(portRange string) error {
	if err := kerneltest.LinkUp("lo"); err != nil {
		return err
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte(portRange), 0); err != nil {
		return err
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:5000")
	if err != nil {
		return err
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		buf := make([]byte, payload)
		if _, err := io.ReadFull(c, buf); err != nil {
			served <- err
			return
		}
		_, err = c.Write(buf)
		c.Read(buf) // EOF: the client closes first
		served <- err
	}()
	c, err := net.Dial("tcp4", "127.0.0.1:5000")
	if err != nil {
		return err
	}
	buf := make([]byte, payload)
	if _, err := c.Write(buf); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	tcpPort := c.LocalAddr().(*net.TCPAddr).Port
	c.Close()
	if err := <-served; err != nil {
		return err
	}

	srv, err := net.ListenPacket("udp4", "127.0.0.1:5000")
	if err != nil {
		return err
	}
	defer srv.Close()
	u, err := net.Dial("udp4", "127.0.0.1:5000")
	if err != nil {
		return err
	}
	if _, err := u.Write(buf[:32]); err != nil {
		return err
	}
	n, peer, err := srv.ReadFrom(buf)
	if err != nil {
		return err
	}
	if _, err := srv.WriteTo(buf[:n], peer); err != nil {
		return err
	}
	if _, err := u.Read(buf); err != nil {
		return err
	}
	udpPort := u.LocalAddr().(*net.UDPAddr).Port
	u.Close()

	fmt.Println(tcpPort, udpPort)
	io.Copy(io.Discard, os.Stdin)
	return nil
}
