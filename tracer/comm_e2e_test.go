package tracer

import (
	"fmt"
	"io"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/event"
)

// A process whose threads have names of their own, as dig's isc-net-0000
// or a JVM's workers do: comm is the process's name, as /proc/PID/comm
// shows it and as --comm matches it, and thread the name of the thread that
// made the connection. A second process, named as the first one's thread,
// shows that --comm with a thread's name was reached and kept only it.
func TestProcessNameAndThreadName(t *testing.T) {
	all := startTracer(t, event.Filter{})
	byProc := startTracer(t, event.Filter{Comm: "pl-proc"})
	byThread := startTracer(t, event.Filter{Comm: "pl-worker"})

	udpServer, udpPort := udpFamilies[0].bound(t)
	go udpEcho(udpServer)
	defer func() {
		unix.Shutdown(udpServer, unix.SHUT_RDWR) // wakes the echo's recvfrom
		unix.Close(udpServer)
	}()
	tcpPort := tcpEcho(t)

	type conns struct {
		h                *helper
		tid              uint32
		udpPort, tcpPort uint16
	}
	run := func(proc, thread string) conns {
		h := startHelper(t, "named", fmt.Sprintf("%s,%s,%d,%d", proc, thread, udpPort, tcpPort), nil)
		c := conns{h: h}
		if _, err := fmt.Sscan(h.line(t), &c.tid, &c.udpPort, &c.tcpPort); err != nil {
			t.Fatalf("helper's thread and ports: %v", err)
		}
		if c.tid == h.pid() {
			t.Fatalf("the helper worked on its main thread %d: its name is the process's", c.tid)
		}
		return c
	}
	a := run("pl-proc", "pl-worker")
	b := run("pl-worker", "pl-other") // named as a's thread

	// The client side of each connection: UDP and TCP, [open close] each.
	ofHelper := func(c conns) func(*event.Event) bool {
		return func(e *event.Event) bool {
			return e.PID == c.h.pid() && (e.Proto == event.ProtoUDP && e.Local.Port() == c.udpPort ||
				e.Proto == event.ProtoTCP && e.Local.Port() == c.tcpPort)
		}
	}
	want := func(r *running) []string {
		if !r.features.datagramHooks() {
			// The connected UDP socket sends without an address: its close alone.
			return []string{"close/outbound", "close/outbound", "open/outbound"}
		}
		return []string{"close/outbound", "close/outbound", "open/outbound", "open/outbound"}
	}
	for _, r := range []struct {
		name string
		*running
	}{{"every process", all}, {"--comm pl-proc", byProc}} {
		got := r.events.waitFor(t, len(want(r.running)), ofHelper(a))
		if keys := eventKeys(got); !slices.Equal(keys, want(r.running)) {
			t.Errorf("%s: events %v, want %v", r.name, keys, want(r.running))
		}
		for _, e := range got {
			key := fmt.Sprintf("%s: %v %v", r.name, e.Proto, e.Kind)
			check(t, key, "comm", e.Comm.String(), "pl-proc")
			check(t, key, "thread", e.Thread.String(), "pl-worker")
			check(t, key, "thread name", string(e.ThreadName()), "pl-worker")
			check(t, key, "tid", e.TID, a.tid)
		}
	}
	got := byThread.events.waitFor(t, len(want(all)), ofHelper(b))
	for _, e := range got {
		check(t, "--comm pl-worker: the process named so", "comm", e.Comm.String(), "pl-worker")
		check(t, "--comm pl-worker: the process named so", "thread", e.Thread.String(), "pl-other")
	}
	if got := byThread.events.matching(ofHelper(a)); len(got) != 0 {
		t.Errorf("--comm pl-worker kept %d events of a process named pl-proc whose thread is pl-worker: %+v", len(got), got)
	}
	for _, r := range []*running{all, byProc, byThread} {
		r.requireNothingLost(t)
	}
}

// tcpEcho is an in-process IPv4 echo server; it returns its port.
func tcpEcho(t *testing.T) uint16 {
	t.Helper()
	return inProcessEcho(t, "tcp4", "127.0.0.1:0").Port()
}

// namedThreadConns names its process and one of its threads, from arg
// "proc,thread,udpPort,tcpPort", and on that thread makes a dig-like UDP
// query and a TCP echo connection to 127.0.0.1. It prints the thread's id
// and the two local ports, and exits when stdin closes.
func namedThreadConns(arg string) error {
	f := strings.Split(arg, ",")
	if len(f) != 4 {
		return fmt.Errorf("want proc,thread,udpPort,tcpPort, got %q", arg)
	}
	udpPort, err := strconv.Atoi(f[2])
	if err != nil {
		return err
	}
	tcpPort, err := strconv.Atoi(f[3])
	if err != nil {
		return err
	}
	// /proc/self/comm is the thread group leader's name, whichever thread
	// writes it.
	if err := os.WriteFile("/proc/self/comm", []byte(f[0]), 0); err != nil {
		return err
	}
	type result struct {
		tid, udp, tcp int
		err           error
	}
	done := make(chan result, 1)
	work := func() {
		var r result
		r.tid = unix.Gettid()
		name := append([]byte(f[1]), 0)
		if r.err = unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&name[0])), 0, 0, 0); r.err == nil {
			r.udp, r.err = namedUDPQuery(udpPort)
		}
		if r.err == nil {
			r.tcp, r.err = namedTCPEcho(tcpPort)
		}
		done <- r
	}
	go func() {
		// Locked for good: the thread ends with the goroutine, and no other
		// goroutine ever runs under its name.
		runtime.LockOSThread()
		if unix.Gettid() != unix.Getpid() {
			work()
			return
		}
		// This is the main thread, whose name is the process's. Holding it
		// here keeps the next locked goroutine off it.
		go func() {
			runtime.LockOSThread()
			work()
		}()
		select {}
	}()
	r := <-done
	if r.err != nil {
		return r.err
	}
	if b, err := os.ReadFile("/proc/self/comm"); err != nil || strings.TrimSpace(string(b)) != f[0] {
		return fmt.Errorf("the process is named %q (%v), want %q", b, err, f[0])
	}
	fmt.Println(r.tid, r.udp, r.tcp)
	io.Copy(io.Discard, os.Stdin)
	return nil
}

// namedUDPQuery binds port 0, connects to 127.0.0.1:port, sends a query,
// reads the answer and returns its local port.
func namedUDPQuery(port int) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{}); err != nil {
		return 0, err
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Port: port, Addr: netip.MustParseAddr("127.0.0.1").As4()}); err != nil {
		return 0, err
	}
	buf := make([]byte, 32)
	if err := unix.Send(fd, buf, 0); err != nil {
		return 0, err
	}
	if _, err := unix.Read(fd, buf); err != nil {
		return 0, err
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return 0, err
	}
	return sa.(*unix.SockaddrInet4).Port, nil
}

// namedTCPEcho makes one echo connection to 127.0.0.1:port, closing first,
// and returns its local port.
func namedTCPEcho(port int) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, &unix.SockaddrInet4{Port: port, Addr: netip.MustParseAddr("127.0.0.1").As4()}); err != nil {
		return 0, err
	}
	buf := make([]byte, payload)
	if _, err := unix.Write(fd, buf); err != nil {
		return 0, err
	}
	for got := 0; got < payload; {
		n, err := unix.Read(fd, buf[got:])
		if err != nil {
			return 0, err
		}
		if n == 0 {
			return 0, io.ErrUnexpectedEOF
		}
		got += n
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return 0, err
	}
	return sa.(*unix.SockaddrInet4).Port, nil
}
