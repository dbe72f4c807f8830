package tracer

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/event"
	"github.com/portlife/portlife/internal/kerneltest"
	"github.com/portlife/portlife/internal/netns"
)

// adoptConns is the size of the adoption scale test: connections held
// while tracing starts, two sockets each. The default's 80,000 sockets are
// more than any start-up table portlife ever had (65,536 entries).
var adoptConns = flag.Int("adopt-conns", 40000, "connections the adoption scale test holds at start (two sockets each)")

// Every socket that exists at start is adopted, however many there are,
// more than any kernel table of portlife's holds: server and client
// processes hold tens of thousands of connections when tracing starts, then
// close them all. Each one's close is reported from both sides, with the
// process that held it, and nothing is lost.
//
// The clients close with a reset, so that each end is seen in the context
// of the process closing it. A burst of FIN handshakes has the kernel's
// softirqs change states while a process's close() runs portlife's hook on
// the same CPU, and the kernel skips those hook runs (Stats.SkippedRuns);
// TestStateHookSkipped covers what portlife does about them.
func TestAdoptAtScale(t *testing.T) {
	requireRoot(t)
	n := *adoptConns
	began := time.Now()
	// A process may hold only so many descriptors (RLIMIT_NOFILE, which
	// root without CAP_SYS_RESOURCE cannot raise past its hard limit): the
	// connections are spread over pairs of a server and a client process,
	// all in one network namespace the first server makes. Go raises each
	// helper's soft limit to its hard limit; a kernel's own default hard
	// limit (a minimal init's) is 4,096.
	var nofile unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &nofile); err != nil {
		t.Fatal(err)
	}
	perPair := int(min(9000, nofile.Max-64))
	type pair struct {
		server, client *helper
		port           uint16 // the server's
	}
	// A connection by its client and server ports: clients of different
	// servers may share a port number.
	type conn struct{ client, server uint16 }
	var pairs []pair
	conns := make(map[conn]*pair, n)
	for i := 0; i < n; i += perPair {
		count, port := min(perPair, n-i), 5000+len(pairs)
		arg := fmt.Sprintf("%d %d", count, port)
		var attr *syscall.SysProcAttr
		if len(pairs) == 0 {
			attr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
		} else {
			arg += fmt.Sprintf(" %d", pairs[0].server.pid())
		}
		p := pair{server: startHelper(t, "holdserver", arg, attr), port: uint16(port)}
		if got := p.server.line(t); got != "listening" {
			t.Fatalf("server said %q, want listening", got)
		}
		nsHolder := p.server.pid()
		if len(pairs) > 0 {
			nsHolder = pairs[0].server.pid()
		}
		p.client = startHelper(t, "holdclients", fmt.Sprintf("%d %d %d", count, port, nsHolder), nil)
		pairs = append(pairs, p)
	}
	for i := range pairs {
		p := &pairs[i]
		for j := 0; j < min(perPair, n-i*perPair); j++ {
			port, err := strconv.Atoi(p.client.line(t))
			if err != nil {
				t.Fatal(err)
			}
			conns[conn{uint16(port), p.port}] = p
		}
		if got := p.server.line(t); got != "accepted" {
			t.Fatalf("server said %q, want accepted", got)
		}
	}
	if len(conns) != n {
		t.Fatalf("%d distinct connections, want %d", len(conns), n)
	}
	held := time.Now()

	ns := netnsInode(t, fmt.Sprintf("/proc/%d/ns/net", pairs[0].server.pid()))
	out := &netnsCloses{netns: ns}
	tr := startTracerTo(t, event.Filter{}, out)
	started := time.Now()
	requireThreadsHome(t)
	for _, p := range pairs {
		p.client.say(t, "close")
	}
	for _, p := range pairs {
		p.server.say(t, "close")
	}
	got := out.wait(t, 2*n)
	stats, err := tr.Stats()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d connections in %d pairs of processes: held in %v, tracing started in %v, all closes reported in %v",
		n, len(pairs), held.Sub(began).Round(time.Millisecond), started.Sub(held).Round(time.Millisecond),
		time.Since(started).Round(time.Millisecond))
	if stats.SkippedRuns > 0 {
		t.Logf("the kernel skipped %d hook runs", stats.SkippedRuns)
	}

	type side struct {
		conn
		dir event.Direction
	}
	seen := make(map[side]int, 2*n)
	bad := 0
	for i := range got {
		e := &got[i]
		s := side{conn{e.Local.Port(), e.Remote.Port()}, e.Direction}
		if e.Direction == event.DirectionInbound {
			s.conn = conn{e.Remote.Port(), e.Local.Port()}
		}
		seen[s]++
		p := conns[s.conn]
		if p == nil {
			t.Errorf("close of a connection the test did not make: %+v", *e)
			continue
		}
		wantPID := p.client.pid()
		if e.Direction == event.DirectionInbound {
			wantPID = p.server.pid()
		}
		if (e.PID != wantPID || e.PIDSource != event.PIDSourceFDOwner || !e.PreExisting) && bad < 5 {
			bad++
			t.Errorf("close %v -> %v %v: pid %d (%v), pre-existing %v; want pid %d (fd_owner), pre-existing",
				e.Local, e.Remote, e.Direction, e.PID, e.PIDSource, e.PreExisting, wantPID)
		}
	}
	missing := map[event.Direction]int{}
	for c := range conns {
		for _, dir := range []event.Direction{event.DirectionOutbound, event.DirectionInbound} {
			if seen[side{c, dir}] != 1 {
				missing[dir]++
			}
		}
	}
	if len(missing) > 0 || len(got) != 2*n {
		t.Errorf("%d close events for %d connections; connections without exactly one close: %d outbound, %d inbound",
			len(got), n, missing[event.DirectionOutbound], missing[event.DirectionInbound])
	}
	requireNothingLost(t, tr)
}

// requireThreadsHome fails the test if a thread of this process is not in
// the network namespace the test started in: adoption enters other
// namespaces, and must leave each thread it used where it was.
func requireThreadsHome(t *testing.T) {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		if ns := netnsInode(t, "/proc/self/task/"+task.Name()+"/ns/net"); ns != testNetns {
			t.Errorf("thread %s is in netns %d, not %d", task.Name(), ns, testNetns)
		}
	}
}

// netnsCloses is an Output that keeps the close events of one network
// namespace: with tens of thousands of them, the collector's rescans on
// every wait would cost more than the test.
type netnsCloses struct {
	netns   uint32
	mu      sync.Mutex
	events  []event.Event
	changed time.Time
}

func (c *netnsCloses) Write(e *event.Event) error {
	if e.NetNS != c.netns || e.Kind != event.KindClose {
		return nil
	}
	c.mu.Lock()
	c.events = append(c.events, *e)
	c.changed = time.Now()
	c.mu.Unlock()
	return nil
}

func (c *netnsCloses) Flush() error { return nil }

// wait returns the events once there are n, or once none came for five
// seconds.
func (c *netnsCloses) wait(t *testing.T, n int) []event.Event {
	t.Helper()
	last := time.Now()
	for {
		c.mu.Lock()
		got, changed := len(c.events), c.changed
		c.mu.Unlock()
		if changed.After(last) {
			last = changed
		}
		if got >= n || time.Since(last) > 5*time.Second {
			c.mu.Lock()
			defer c.mu.Unlock()
			return c.events
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// say writes a command to the helper's stdin and waits for it to answer
// "done <command>".
func (h *helper) say(t *testing.T, cmd string) {
	t.Helper()
	if _, err := io.WriteString(h.stdin, cmd+"\n"); err != nil {
		t.Fatalf("telling the helper %q: %v", cmd, err)
	}
	if got := h.line(t); got != "done "+cmd {
		t.Fatalf("helper answered %q to %q", got, cmd)
	}
}

// holdServer listens on 127.0.0.1:port, accepts n connections, and holds
// them until told "close" on stdin; it exits when stdin closes. arg is
// "n port", in a network namespace of its own that it sets up, or
// "n port pid" to join the namespace of process pid.
func holdServer(arg string) error {
	var n, port, pid int
	f := strings.Fields(arg)
	if _, err := fmt.Sscan(strings.Join(append(f, "0")[:3], " "), &n, &port, &pid); err != nil {
		return err
	}
	if err := raiseNofile(n); err != nil {
		return err
	}
	if pid != 0 {
		if err := joinNetns(pid); err != nil {
			return err
		}
	} else if err := holdNetns(); err != nil {
		return err
	}
	ln, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err := unix.Bind(ln, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return err
	}
	if err := unix.Listen(ln, n); err != nil {
		return err
	}
	fmt.Println("listening")
	fds := make([]int, 0, n)
	for len(fds) < n {
		fd, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC)
		if err != nil {
			return fmt.Errorf("accept: %w", err)
		}
		fds = append(fds, fd)
	}
	fmt.Println("accepted")
	return holdUntilClose(fds)
}

// holdNetns sets up a fresh network namespace for tens of thousands of
// loopback connections.
func holdNetns() error {
	if err := kerneltest.LinkUp("lo"); err != nil {
		return err
	}
	// Room for every connection in the ephemeral range, which leaves the
	// servers' ports out, and for all of a listener's waiting to be
	// accepted.
	for file, value := range map[string]string{
		"/proc/sys/net/ipv4/ip_local_port_range": "10000 65535",
		"/proc/sys/net/core/somaxconn":           "65535",
	} {
		if err := os.WriteFile(file, []byte(value), 0); err != nil {
			return err
		}
	}
	return nil
}

// joinNetns moves the calling thread into the network namespace of process
// pid, and keeps the goroutine on it: a socket belongs to the namespace of
// the thread that creates it, and setns changes only that thread.
func joinNetns(pid int) error {
	runtime.LockOSThread()
	f, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("entering the network namespace of %d: %w", pid, err)
	}
	return nil
}

// holdClients makes n connections to 127.0.0.1:port in the network
// namespace of process pid (arg "n port pid"), prints each local port, and
// holds them until told "close" on stdin. It exits when stdin closes.
func holdClients(arg string) error {
	var n, port, pid int
	if _, err := fmt.Sscan(arg, &n, &port, &pid); err != nil {
		return err
	}
	if err := raiseNofile(n); err != nil {
		return err
	}
	if err := joinNetns(pid); err != nil {
		return err
	}
	out := bufio.NewWriter(os.Stdout)
	dst := &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}
	fds := make([]int, 0, n)
	for len(fds) < n {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if err := unix.Connect(fd, dst); err != nil {
			return fmt.Errorf("connect %d: %w", len(fds)+1, err)
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			return err
		}
		// close() resets the connection (see TestAdoptAtScale).
		if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1}); err != nil {
			return err
		}
		fmt.Fprintln(out, sa.(*unix.SockaddrInet4).Port)
		fds = append(fds, fd)
	}
	if err := out.Flush(); err != nil {
		return err
	}
	return holdUntilClose(fds)
}

// holdUntilClose waits for "close" on stdin, closes fds, says "done close",
// and returns when stdin closes.
func holdUntilClose(fds []int) error {
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() != "close" {
			return fmt.Errorf("unexpected command %q", in.Text())
		}
		for _, fd := range fds {
			unix.Close(fd)
		}
		fds = nil
		fmt.Println("done close")
	}
	return in.Err()
}

// raiseNofile lets the process hold n sockets and then some.
func raiseNofile(n int) error {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	want := uint64(n) + 64
	if lim.Cur >= want {
		return nil
	}
	if lim.Max < want {
		return fmt.Errorf("RLIMIT_NOFILE allows %d descriptors, not the %d needed", lim.Max, want)
	}
	lim.Cur = want
	return unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
}

// A listener in a network namespace that no process is in (its owner made
// it there and left, as container runtimes do) is adopted: the connections
// it accepts after start are reported, in that namespace, with its owner.
func TestAdoptNetnsWithoutProcess(t *testing.T) {
	requireRoot(t)
	h := startHelper(t, "foreignlistener", "", nil)
	var ns uint32
	if _, err := fmt.Sscanf(h.line(t), "listening in %d", &ns); err != nil {
		t.Fatalf("helper: %v", err)
	}
	for _, path := range netns.Paths() {
		if ino, ok := netns.Inode(path); ok && ino == ns {
			t.Fatalf("%s is in the listener's netns %d: the test does not test what it says", path, ns)
		}
	}

	r := startTracer(t, event.Filter{})
	requireThreadsHome(t)
	h.say(t, "connect")
	port, err := strconv.Atoi(h.line(t))
	if err != nil {
		t.Fatal(err)
	}
	loopback := netip.MustParseAddr("127.0.0.1")
	client, server := netip.AddrPortFrom(loopback, uint16(port)), netip.AddrPortFrom(loopback, 5000)
	isConn := func(e *event.Event) bool { return ofConn(client, server)(e) && e.NetNS == ns }
	got := r.events.waitFor(t, 4, isConn)
	keys := eventKeys(got)
	if want := []string{"close/inbound", "close/outbound", "open/inbound", "open/outbound"}; !slices.Equal(keys, want) {
		t.Fatalf("events %v, want %v: %+v", keys, want, got)
	}
	for _, e := range got {
		key := e.Kind.String() + "/" + e.Direction.String()
		check(t, key, "pid", e.PID, h.pid())
		wantSource := event.PIDSourceConnect
		if e.Direction == event.DirectionInbound {
			wantSource = event.PIDSourceListenerFDOwner
		}
		check(t, key, "pid source", e.PIDSource, wantSource)
		check(t, key, "pre-existing", e.PreExisting, false)
	}
	r.requireNothingLost(t)
}

// foreignListener listens on 127.0.0.1:5000 in a network namespace of its
// own that it leaves at once, so that no process is in it; it prints
// "listening in <netns inode>". Told "connect", it goes back in through the
// listener, makes one echo connection to it (the client closes first), and
// prints "done connect" and the client's port. It exits when stdin closes.
func foreignListener(string) error {
	runtime.LockOSThread() // setns and unshare change this thread only
	home, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return err
	}
	defer home.Close()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return err
	}
	if err := kerneltest.LinkUp("lo"); err != nil {
		return err
	}
	ln, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	addr := &unix.SockaddrInet4{Port: 5000, Addr: [4]byte{127, 0, 0, 1}}
	if err := unix.Bind(ln, addr); err != nil {
		return err
	}
	if err := unix.Listen(ln, 8); err != nil {
		return err
	}
	if err := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); err != nil {
		return err
	}
	nsfd, err := unix.IoctlRetInt(ln, unix.SIOCGSKNS)
	if err != nil {
		return err
	}
	defer unix.Close(nsfd)
	var st unix.Stat_t
	if err := unix.Fstat(nsfd, &st); err != nil {
		return err
	}
	fmt.Println("listening in", st.Ino)

	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() != "connect" {
			return fmt.Errorf("unexpected command %q", in.Text())
		}
		if err := unix.Setns(nsfd, unix.CLONE_NEWNET); err != nil {
			return err
		}
		port, err := echoOnce(ln, addr)
		if err != nil {
			return err
		}
		if err := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); err != nil {
			return err
		}
		fmt.Printf("done connect\n%d\n", port)
	}
	return in.Err()
}

// echoOnce connects to the listener ln at addr, sends payload bytes and
// reads them back, closes the client end and then the accepted one, and
// returns the client's port.
func echoOnce(ln int, addr *unix.SockaddrInet4) (int, error) {
	c, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(c)
	if err := unix.Connect(c, addr); err != nil {
		return 0, err
	}
	s, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC)
	if err != nil {
		return 0, err
	}
	defer unix.Close(s)
	buf := make([]byte, payload)
	for _, step := range []struct{ from, to int }{{c, s}, {s, c}} {
		if _, err := unix.Write(step.from, buf); err != nil {
			return 0, err
		}
		for n := 0; n < payload; {
			m, err := unix.Read(step.to, buf[n:])
			if err != nil {
				return 0, err
			}
			n += m
		}
	}
	sa, err := unix.Getsockname(c)
	if err != nil {
		return 0, err
	}
	unix.Close(c)
	if _, err := unix.Read(s, buf); err != nil { // EOF: the client closed first
		return 0, err
	}
	return sa.(*unix.SockaddrInet4).Port, nil
}

// A listener that existed at start names its owner for the connections it
// accepts: those it accepts after start, and one that was waiting in its
// queue at start, which no process held yet. They say so: pid_source
// listener_fd_owner, and pre_existing only for the one from before.
func TestAdoptListener(t *testing.T) {
	requireRoot(t)
	fam := tcpFamilies[0]
	ln := listen(t, fam)
	defer ln.Close()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	queued, err := fam.dial(port) // accepted by the kernel, not yet by accept()
	if err != nil {
		t.Fatal(err)
	}
	defer queued.Close()
	queuedLocal := addrPort(t, queued.LocalAddr())

	r := startTracer(t, event.Filter{})
	fresh, err := fam.dial(port)
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	freshLocal := addrPort(t, fresh.LocalAddr())
	for _, c := range []net.Conn{queued, fresh} {
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		closeFirst(t, c.(*net.TCPConn), s.(*net.TCPConn), false)
	}

	server := addrPort(t, ln.Addr())
	tests := []struct {
		name        string
		client      netip.AddrPort
		want        []string
		preExisting bool
		outSource   event.PIDSource
	}{
		{"waiting at start", queuedLocal, []string{"close/inbound", "close/outbound"}, true, event.PIDSourceFDOwner},
		{"after start", freshLocal, []string{"close/inbound", "close/outbound", "open/inbound", "open/outbound"}, false, event.PIDSourceConnect},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := r.events.waitFor(t, len(tt.want), ofConn(tt.client, server))
			if keys := eventKeys(got); !slices.Equal(keys, tt.want) {
				t.Fatalf("events %v, want %v: %+v", keys, tt.want, got)
			}
			for _, e := range got {
				key := e.Kind.String() + "/" + e.Direction.String()
				wantSource := tt.outSource
				if e.Direction == event.DirectionInbound {
					wantSource = event.PIDSourceListenerFDOwner
				}
				check(t, key, "pid source", e.PIDSource, wantSource)
				check(t, key, "pid", e.PID, uint32(os.Getpid()))
				check(t, key, "comm", e.Comm.String(), ownComm(t))
				check(t, key, "pre-existing", e.PreExisting, tt.preExisting)
			}
		})
	}
	r.requireNothingLost(t)
}

// A connect that is retrying when tracing starts (its SYNs dropped) is
// adopted: whether it then times out or succeeds, its outcome is reported,
// marked pre-existing, with the process that held it.
func TestAdoptConnecting(t *testing.T) {
	requireRoot(t)
	timesOut, succeeds := stallConnect(t), stallConnect(t)
	r := startTracer(t, event.Filter{})
	timesOut.timeOut(t)
	succeeds.unblock(t)

	tests := []struct {
		name string
		s    *stalled
		want event.Kind
		then func(t *testing.T, s *stalled) // ends the connection, if it opened
	}{
		{"times out", timesOut, event.KindConnectFailed, nil},
		{"succeeds", succeeds, event.KindOpen, func(t *testing.T, s *stalled) { s.close() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			of := func(e *event.Event) bool { return e.Local == tt.s.local && e.Remote == tt.s.remote }
			want := []event.Kind{tt.want}
			if tt.then != nil {
				r.events.waitFor(t, 1, of)
				tt.then(t, tt.s)
				want = append(want, event.KindClose)
			}
			got := r.events.waitFor(t, len(want), of)
			if len(got) != len(want) {
				t.Fatalf("%d events, want %v: %+v", len(got), want, got)
			}
			for i, e := range got {
				key := e.Kind.String()
				check(t, key, "kind", e.Kind, want[i])
				check(t, key, "pre-existing", e.PreExisting, true)
				check(t, key, "start", e.Start, time.Time{})
				check(t, key, "pid", e.PID, uint32(os.Getpid()))
				check(t, key, "pid source", e.PIDSource, event.PIDSourceFDOwner)
				check(t, key, "direction", e.Direction, event.DirectionOutbound)
				if e.Kind == event.KindConnectFailed {
					check(t, key, "reason", e.Reason(), "timeout")
				}
			}
		})
	}
	r.requireNothingLost(t)
}
