package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/kerneltest"
)

// The port accounting tests exhaust ports for real, in network namespaces
// they create with small ephemeral ranges. A namespace belongs to one locked
// thread of the test process (kerneltest.Netns), so portlife's events name
// the test's own pid, and portlife enters the namespace through that thread.

// waitTimeWait waits, up to 10 s, until n TCP sockets of the namespace with
// a local port in [lo, hi] are in TIME_WAIT, as /proc/net/tcp shows them: a
// timewait socket still in its FIN_WAIT2 substate is not yet.
func waitTimeWait(n *kerneltest.Netns, lo, hi uint16, want int) error {
	var got int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		err := n.Do(func() error {
			b, err := os.ReadFile("/proc/thread-self/net/tcp")
			if err != nil {
				return err
			}
			got = 0
			for _, line := range strings.Split(string(b), "\n")[1:] {
				f := strings.Fields(line)
				if len(f) < 4 {
					continue
				}
				_, portHex, _ := strings.Cut(f[1], ":")
				port, err := strconv.ParseUint(portHex, 16, 16)
				if err == nil && uint16(port) >= lo && uint16(port) <= hi && f[3] == "06" {
					got++
				}
			}
			return nil
		})
		if err != nil || got == want {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d sockets of ports %d-%d in TIME_WAIT after 10s, want %d", got, lo, hi, want)
		}
	}
}

func sockaddr(ap netip.AddrPort) *unix.SockaddrInet4 {
	return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
}

// tcpListen listens on ap (outside the ephemeral range) with a backlog
// that holds every connection of a test.
func tcpListen(ap netip.AddrPort) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.Bind(fd, sockaddr(ap)); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind %v: %w", ap, err)
	}
	return fd, unix.Listen(fd, 4096)
}

// connectTo connects a new socket to dst with raw connect(2), which, unlike
// net.Dial, does not retry EADDRNOTAVAIL. bindFirst: bind() it to port 0
// first, as clients that set a source address do.
func connectTo(dst netip.AddrPort, bindFirst bool) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if bindFirst {
		if err := unix.Bind(fd, &unix.SockaddrInet4{}); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	if err := unix.Connect(fd, sockaddr(dst)); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// timeWait makes one connection to dst through listener ln and closes our
// side first, so its port waits in TIME_WAIT.
func timeWait(ln int, dst netip.AddrPort, bindFirst bool) error {
	c, err := connectTo(dst, bindFirst)
	if err != nil {
		return err
	}
	s, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC)
	if err != nil {
		unix.Close(c)
		return err
	}
	unix.Close(c) // our FIN first
	unix.Close(s) // then the server's, which takes ours to TIME_WAIT
	return nil
}

// jsonEvent is an event line of portlife's JSON output, pressure fields
// included.
type jsonEvent struct {
	TS           time.Time `json:"ts"`
	Event        string    `json:"event"`
	Proto        string    `json:"proto"`
	PID          uint32    `json:"pid"`
	Comm         string    `json:"comm"`
	NetNS        uint32    `json:"netns"`
	Laddr        string    `json:"laddr"`
	Lport        uint16    `json:"lport"`
	Raddr        string    `json:"raddr"`
	Rport        uint16    `json:"rport"`
	Reason       string    `json:"reason"`
	Errno        int       `json:"errno"`
	BBC          bool      `json:"bind_before_connect"`
	Mechanism    string    `json:"mechanism"`
	Used         int       `json:"used"`
	Capacity     int       `json:"capacity"`
	Pressure     float64   `json:"pressure"`
	Threshold    float64   `json:"threshold"`
	Rising       bool      `json:"rising"`
	TimeWait     int       `json:"time_wait_ports"`
	Rate         float64   `json:"rate"`
	ExhaustionMs *float64  `json:"exhaustion_ms"`
	Top          []struct {
		PID   uint32 `json:"pid"`
		Comm  string `json:"comm"`
		Ports int    `json:"ports"`
		BBC   int    `json:"bind_before_connect"`
	} `json:"top"`
}

func parseEvents(t *testing.T, out []byte) []jsonEvent {
	t.Helper()
	var evs []jsonEvent
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e jsonEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("bad JSON line %q: %v", sc.Text(), err)
		}
		evs = append(evs, e)
	}
	return evs
}

func pressureOf(evs []jsonEvent, netns uint32, mech, raddr string, rport uint16) []jsonEvent {
	var out []jsonEvent
	for _, e := range evs {
		if e.Event == "pressure" && e.NetNS == netns && e.Mechanism == mech && (raddr == "" || e.Raddr == raddr && e.Rport == rport) {
			out = append(out, e)
		}
	}
	return out
}

// wantThresholds checks that the key crossed each threshold upwards once, in
// order, and each before the failure at failed.
func wantThresholds(t *testing.T, got []jsonEvent, failed time.Time, thresholds ...float64) {
	t.Helper()
	var rising []jsonEvent
	for _, e := range got {
		if e.Rising {
			rising = append(rising, e)
		}
	}
	if len(rising) != len(thresholds) {
		t.Fatalf("%d rising pressure events, want one per threshold %v: %+v", len(rising), thresholds, rising)
	}
	for i, e := range rising {
		if e.Threshold != thresholds[i] {
			t.Errorf("pressure event %d crossed %v, want %v", i, e.Threshold, thresholds[i])
		}
		if e.Pressure < e.Threshold {
			t.Errorf("pressure event at %v reports pressure %v", e.Threshold, e.Pressure)
		}
		if e.TS.After(failed) {
			t.Errorf("the %v pressure event (%v) came after the first failure (%v)", e.Threshold, e.TS, failed)
		}
	}
}

// twoListeners listens in ns on two destinations, 127.0.0.1:5000 and
// 127.0.0.2:5000.
func twoListeners(t *testing.T, ns *kerneltest.Netns) (dst1, dst2 netip.AddrPort, ln1, ln2 int) {
	t.Helper()
	dst1, dst2 = netip.MustParseAddrPort("127.0.0.1:5000"), netip.MustParseAddrPort("127.0.0.2:5000")
	if err := ns.Do(func() (err error) {
		if ln1, err = tcpListen(dst1); err != nil {
			return err
		}
		ln2, err = tcpListen(dst2)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return dst1, dst2, ln1, ln2
}

// pressWorkload, run in the listeners' namespace, leaves closed
// connections to dst1 in TIME_WAIT (our side closes first), holds held more
// to dst1 open, and bound ones to dst2 that took their port with bind(0)
// first; both ends of the open ones are held until the namespace goes.
func pressWorkload(ln1, ln2 int, dst1, dst2 netip.AddrPort, closed, held, bound int) error {
	for range closed {
		if err := timeWait(ln1, dst1, false); err != nil {
			return err
		}
	}
	for i := range held + bound {
		dst, ln, bindFirst := dst1, ln1, false
		if i >= held {
			dst, ln, bindFirst = dst2, ln2, true
		}
		if _, err := connectTo(dst, bindFirst); err != nil {
			return err
		}
		if _, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC); err != nil {
			return err
		}
	}
	return nil
}

func TestPressurePerDestination(t *testing.T) {
	requireRoot(t)
	// 100 ports, TIME_WAIT not reusable: 20 connections a second to one
	// destination, closed by us, exhaust it in 5 s; a second destination,
	// used at 5 a second meanwhile, stays near 25%.
	ns := kerneltest.NewNetns(t, map[string]string{"ip_local_port_range": "40000 40099", "tcp_tw_reuse": "0"})
	dst1, dst2, ln1, ln2 := twoListeners(t, ns)

	// Reconciling with the kernel every second meanwhile must change none
	// of it: the events and the kernel agree.
	p := start(t, "--output", "json", "--pid", fmt.Sprint(os.Getpid()), "--flush-interval", "10ms", "--port-reconcile", "1s")
	var failed time.Time
	var made int
	err := ns.Do(func() error {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < 200; i++ {
			<-tick.C
			if err := timeWait(ln1, dst1, false); err != nil {
				if errors.Is(err, unix.EADDRNOTAVAIL) {
					failed = time.Now()
					return nil
				}
				return err
			}
			made++
			if i%4 == 0 {
				if err := timeWait(ln2, dst2, false); err != nil {
					return err
				}
			}
		}
		return fmt.Errorf("%d connections and no EADDRNOTAVAIL", made)
	})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if code := p.stop(t, os.Interrupt); code != 0 {
		t.Fatalf("exit code %d; stderr:\n%s", code, p.stderr.String())
	}
	evs := parseEvents(t, p.stdout.Bytes())
	if !strings.Contains(p.stderr.String(), `"reconciled_gone": 0`) && !strings.Contains(p.stderr.String(), `"reconciled_gone":0`) {
		t.Errorf("reconciliation forgot sockets the events still count; stderr:\n%s", p.stderr.String())
	}

	var failure *jsonEvent
	for i, e := range evs {
		if e.Event == "connect_failed" && e.NetNS == ns.Inode && e.Reason == "no_ephemeral_port" {
			failure = &evs[i]
			break
		}
	}
	if failure == nil {
		t.Fatalf("no connect_failed no_ephemeral_port reported; stderr:\n%s", p.stderr.String())
	}
	if failure.TS.After(failed) {
		t.Fatalf("the failure's ts %v is after connect() returned, %v", failure.TS, failed)
	}

	got := pressureOf(evs, ns.Inode, "per_destination", "127.0.0.1", 5000)
	wantThresholds(t, got, failure.TS, 0.5, 0.8, 0.95, 1)
	last := got[len(got)-1]
	// The last connection is still open when it takes the last port.
	if last.Used != 100 || last.Capacity != 100 || last.TimeWait < 99 {
		t.Errorf("at 100%%: used %d, capacity %d, time_wait %d; want 100, 100, at least 99", last.Used, last.Capacity, last.TimeWait)
	}
	if last.PID != uint32(os.Getpid()) || len(last.Top) == 0 || last.Top[0].PID != uint32(os.Getpid()) || last.Top[0].Ports != 100 {
		t.Errorf("the 100%% event names pid %d, top %+v; want this test, %d, with 100 ports", last.PID, last.Top, os.Getpid())
	}
	// The estimate given at 50%, against how long exhaustion took from then.
	half := got[0]
	if half.ExhaustionMs == nil {
		t.Fatalf("the 50%% event has no exhaustion estimate: %+v", half)
	}
	est := time.Duration(*half.ExhaustionMs * float64(time.Millisecond))
	actual := failure.TS.Sub(half.TS)
	if diff := est - actual; diff < -actual/4 || diff > actual/4 {
		t.Errorf("at 50%% exhaustion was estimated in %v; it took %v (more than 25%% off)", est, actual)
	}
	t.Logf("estimated at 50%%: %v, actual %v, rate %.1f/s", est, actual, half.Rate)

	// The second destination keeps its own count: about 25 of 100.
	if other := pressureOf(evs, ns.Inode, "per_destination", "127.0.0.2", 5000); len(other) != 0 {
		t.Errorf("the second destination, at about 25%%, reported pressure: %+v", other)
	}
}

// dumpPorts runs portlife ports --output json.
func dumpPorts(t *testing.T) []portsJSON {
	t.Helper()
	cmd := exec.Command(binary, "ports", "--output", "json")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("portlife ports: %v; stderr:\n%s", err, stderr.String())
	}
	var keys []portsJSON
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var k portsJSON
		if err := json.Unmarshal([]byte(line), &k); err != nil {
			t.Fatalf("bad line %q: %v", line, err)
		}
		keys = append(keys, k)
	}
	return keys
}

func TestStartupCountsExistingPorts(t *testing.T) {
	requireRoot(t)
	// 10 ports; 4 connections open and 3 in TIME_WAIT before portlife
	// starts: U is 7 from the first second, 70%.
	ns := kerneltest.NewNetns(t, map[string]string{"ip_local_port_range": "40000 40009", "tcp_tw_reuse": "0"})
	dst := netip.MustParseAddrPort("127.0.0.3:5000")
	if err := ns.Do(func() error {
		ln, err := tcpListen(dst)
		if err != nil {
			return err
		}
		for range 3 {
			if err := timeWait(ln, dst, false); err != nil {
				return err
			}
		}
		for range 4 {
			if _, err := connectTo(dst, false); err != nil { // held until the namespace goes
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	var key *portsJSON
	for _, k := range dumpPorts(t) {
		if k.NetNS == ns.Inode && k.Mechanism == "per_destination" && k.Raddr == "127.0.0.3" {
			key = &k
		}
	}
	if key == nil {
		t.Fatal("portlife ports shows no key for the namespace's destination")
	}
	if key.Used != 7 || key.TimeWait != 3 || key.Capacity != 10 || key.NextExpiryMs == nil || *key.NextExpiryMs > 60000 || *key.NextExpiryMs < 50000 {
		t.Errorf("portlife ports: %+v; want used 7, time_wait 3, capacity 10, next expiry within 60s", *key)
	}
	if len(key.Top) == 0 || key.Top[0].PID != uint32(os.Getpid()) || key.Top[0].Ports != 4 {
		t.Errorf("portlife ports: top %+v; want this test with its 4 open connections", key.Top)
	}

	// Tracing counts them at once: the 50% crossing is sent at start.
	p := start(t, "--output", "json", "--raddr", "127.0.0.3/32", "--flush-interval", "10ms")
	time.Sleep(time.Second)
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit code %d; stderr:\n%s", code, p.stderr.String())
	}
	got := pressureOf(parseEvents(t, p.stdout.Bytes()), ns.Inode, "per_destination", "127.0.0.3", 5000)
	if len(got) != 1 || got[0].Used != 7 || got[0].TimeWait != 3 || got[0].Threshold != 0.5 {
		t.Fatalf("pressure in the first second: %+v; want one event, at 50%%, used 7, time_wait 3", got)
	}
}

func TestPressureBindPool(t *testing.T) {
	requireRoot(t)
	// 10 ports. Sockets that bind() to port 0 and then connect take their
	// ports from the pool every destination shares: after 10 of them (in
	// TIME_WAIT), bind() fails, and so does a plain connect() elsewhere.
	ns := kerneltest.NewNetns(t, map[string]string{"ip_local_port_range": "40000 40009", "tcp_tw_reuse": "0"})
	dst1, dst2 := netip.MustParseAddrPort("127.0.0.1:5000"), netip.MustParseAddrPort("127.0.0.2:5000")
	var ln1 int
	if err := ns.Do(func() (err error) {
		if ln1, err = tcpListen(dst1); err != nil {
			return err
		}
		_, err = tcpListen(dst2)
		return err
	}); err != nil {
		t.Fatal(err)
	}

	p := start(t, "--output", "json", "--pid", fmt.Sprint(os.Getpid()), "--flush-interval", "10ms")
	var made int
	var bindErr, connectErr error
	if err := ns.Do(func() error {
		for made < 20 {
			if bindErr = timeWait(ln1, dst1, true); bindErr != nil {
				break
			}
			made++
		}
		_, connectErr = connectTo(dst2, false)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if made != 10 || !errors.Is(bindErr, unix.EADDRINUSE) || !errors.Is(connectErr, unix.EADDRNOTAVAIL) {
		t.Fatalf("%d bind-then-connects, then %v, and a plain connect elsewhere: %v; want 10, EADDRINUSE, EADDRNOTAVAIL", made, bindErr, connectErr)
	}
	// The last closes finish in softirq, late under load: snapshot once
	// the kernel itself holds the 10 ports in TIME_WAIT.
	if err := waitTimeWait(ns, 40000, 40009, 10); err != nil {
		t.Fatal(err)
	}
	var snapshot *portsJSON
	for _, k := range dumpPorts(t) {
		if k.NetNS == ns.Inode && k.Mechanism == "bind_pool" {
			snapshot = &k
		}
	}
	time.Sleep(300 * time.Millisecond)
	if code := p.stop(t, os.Interrupt); code != 0 {
		t.Fatalf("exit code %d; stderr:\n%s", code, p.stderr.String())
	}
	evs := parseEvents(t, p.stdout.Bytes())

	var bindFailed, connectFailed *jsonEvent
	bbc := map[uint16]bool{} // local port: every event of it says bind_before_connect
	for i, e := range evs {
		if e.NetNS != ns.Inode {
			continue
		}
		switch {
		case e.Event == "bind_failed" && e.Reason == "no_ephemeral_port":
			bindFailed = &evs[i]
		case e.Event == "connect_failed" && e.Raddr == "127.0.0.2" && e.Reason == "no_ephemeral_port":
			connectFailed = &evs[i]
		case (e.Event == "open" || e.Event == "close") && e.Raddr == "127.0.0.1" && e.Rport == 5000:
			if prev, seen := bbc[e.Lport]; !seen || prev {
				bbc[e.Lport] = e.BBC
			}
		}
	}
	if bindFailed == nil || connectFailed == nil {
		t.Fatalf("bind_failed %v, connect_failed to the other destination %v: want both reported (no_ephemeral_port)", bindFailed, connectFailed)
	}
	if len(bbc) != 10 {
		t.Errorf("events of %d bind-then-connect sockets, want 10", len(bbc))
	}
	for port, ok := range bbc {
		if !ok {
			t.Errorf("a socket of port %d lacks bind_before_connect", port)
		}
	}
	got := pressureOf(evs, ns.Inode, "bind_pool", "", 0)
	wantThresholds(t, got, bindFailed.TS, 0.5, 0.8, 0.95, 1)
	last := got[len(got)-1]
	if last.Laddr != "0.0.0.0" || last.Used != 10 || last.Capacity != 10 || len(last.Top) == 0 || last.Top[0].BBC != 10 {
		t.Errorf("bind_pool at 100%%: %+v; want 0.0.0.0, 10 of 10, all bind_before_connect", last)
	}
	// The plain connect failed while the pool was full: the pool blocked it.
	if connectFailed.TS.Before(last.TS) {
		t.Errorf("the connect to the other destination failed (%v) before the pool was full (%v)", connectFailed.TS, last.TS)
	}
	// A snapshot sees the pool full too; which socket bound first, only
	// tracing knows (sock_diag does not say).
	if snapshot == nil || snapshot.Used != 10 || snapshot.Capacity != 10 || snapshot.TimeWait != 10 {
		t.Errorf("portlife ports' bind_pool: %+v; want 10 of 10, in TIME_WAIT", snapshot)
	}
}

func TestPressureUDP(t *testing.T) {
	requireRoot(t)
	// 10 ports. Connected UDP sockets to five destinations take one port
	// each, whatever the destination: the eleventh connect() finds none.
	ns := kerneltest.NewNetns(t, map[string]string{"ip_local_port_range": "40000 40009"})
	var dsts []netip.AddrPort
	if err := ns.Do(func() error {
		for i := range 5 {
			dst := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(6000+i))
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			if err := unix.Bind(fd, sockaddr(dst)); err != nil { // a receiver, so no ICMP errors
				return err
			}
			dsts = append(dsts, dst)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	p := start(t, "--output", "json", "--pid", fmt.Sprint(os.Getpid()), "--flush-interval", "10ms")
	var made int
	var connectErr error
	if err := ns.Do(func() error {
		for made < 20 {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			if connectErr = unix.Connect(fd, sockaddr(dsts[made%len(dsts)])); connectErr != nil {
				unix.Close(fd)
				return nil
			}
			// Held until the namespace goes; a datagram makes its open.
			if err := unix.Send(fd, []byte("q"), 0); err != nil {
				return err
			}
			made++
			time.Sleep(20 * time.Millisecond)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if made != 10 || !errors.Is(connectErr, unix.EAGAIN) {
		t.Fatalf("%d UDP connects, then %v; want 10, then EAGAIN", made, connectErr)
	}
	time.Sleep(300 * time.Millisecond)
	if code := p.stop(t, os.Interrupt); code != 0 {
		t.Fatalf("exit code %d; stderr:\n%s", code, p.stderr.String())
	}
	evs := parseEvents(t, p.stdout.Bytes())
	var failure *jsonEvent
	for i, e := range evs {
		if e.NetNS == ns.Inode && e.Event == "connect_failed" && e.Proto == "udp" && e.Reason == "no_ephemeral_port" && e.Errno == int(unix.EAGAIN) {
			failure = &evs[i]
		}
	}
	if failure == nil {
		t.Fatal("the UDP connect's EAGAIN was not reported")
	}
	got := pressureOf(evs, ns.Inode, "udp", "", 0)
	wantThresholds(t, got, failure.TS, 0.5, 0.8, 0.95, 1)
	last := got[len(got)-1]
	if last.Laddr != "127.0.0.1" || last.Used != 10 || last.Capacity != 10 || last.Proto != "udp" {
		t.Errorf("udp at 100%%: %+v; want 127.0.0.1, 10 of 10", last)
	}
	for _, e := range evs {
		if e.Event == "pressure" && e.NetNS == ns.Inode && e.Mechanism != "udp" {
			t.Errorf("UDP ports pressed a %s key: %+v", e.Mechanism, e)
		}
	}
}

// With no key to show, the output is empty (no JSON line, or the text
// header alone), and a line on stderr says so: else "nothing is held" and
// "nothing could be read" look the same. Unprivileged in a namespace of its
// own, portlife ports sees only that namespace, where nothing is held.
func TestPortsSaysWhenNothingIsHeld(t *testing.T) {
	requireRoot(t) // to give it a namespace of its own, and drop privileges
	cmd := exec.Command(binary, "ports", "--output", "json")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNET,
		Credential: &syscall.Credential{Uid: 65534, Gid: 65534},
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("portlife ports: %v; stderr:\n%s", err, stderr.String())
	}
	if len(out) != 0 {
		t.Errorf("stdout %q, want nothing", out)
	}
	if n := strings.Count(stderr.String(), "no ephemeral port is held"); n != 1 {
		t.Errorf("stderr says %d times that no port is held, want once:\n%s", n, stderr.String())
	}
}
