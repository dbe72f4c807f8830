package tracer

import (
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/event"
	"github.com/portlife/portlife/internal/kerneltest"
)

// failure is what a test expects of one connect_failed or bind_failed.
type failure struct {
	kind      event.Kind
	proto     event.Proto
	family    int
	local     netip.AddrPort // its port, if autoLocal: the one the helper printed
	autoLocal bool
	remote    netip.AddrPort
	reason    string
	errno     unix.Errno
	inCall    bool // seen at the call's return, not by TCP's state machine
	direction event.Direction
	ephemeral bool
}

var (
	any4    = netip.IPv4Unspecified()
	any6    = netip.IPv6Unspecified()
	noPeer4 = netip.AddrPortFrom(any4, 0)
	noPeer6 = netip.AddrPortFrom(any6, 0)
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// Calls that fail before the protocol takes over are reported, once each,
// with their reason and errno; calls that succeed, and failures TCP's state
// machine reports, add nothing. Each case runs in a network namespace of
// its own, whose ephemeral range is 40000-40009 and which has no route but
// loopback: the helper makes the calls, prints the last one's errno and
// local port, then makes one last failing call, the sentinel. Every event
// of the helper's calls comes before the sentinel's, so once it is in,
// the helper's failures are all there is to count.
//
// The helpers name themselves pl-calls, and the tracer follows that name
// alone: the filters apply to failures as to every event, and the rest of
// the host's traffic stays out.
func TestCallFailures(t *testing.T) {

	r := startTracer(t, event.Filter{Comm: callsComm})
	deny := denyConnectCgroup(t)

	unreachable := func(proto event.Proto, family int, local netip.AddrPort, remote string) failure {
		return failure{kind: event.KindConnectFailed, proto: proto, family: family, local: local, remote: ap(remote),
			reason: "unreachable", errno: unix.ENETUNREACH, inCall: true, direction: event.DirectionOutbound, ephemeral: true}
	}
	tests := []struct {
		scenario string
		denied   bool // run in a cgroup whose connect4 program refuses every connect
		errno    unix.Errno
		want     []failure
	}{
		{"tcp4 unroutable", false, unix.ENETUNREACH, []failure{unreachable(event.ProtoTCP, 4, noPeer4, "10.255.0.1:80")}},
		{"tcp6 unroutable", false, unix.ENETUNREACH, []failure{unreachable(event.ProtoTCP, 6, noPeer6, "[2001:db8::1]:80")}},
		{"udp4 unroutable", false, unix.ENETUNREACH, []failure{func() failure {
			// The port was bound before the route was looked up.
			f := unreachable(event.ProtoUDP, 4, noPeer4, "10.255.0.1:53")
			f.autoLocal = true
			return f
		}()}},
		{"udp6 unroutable", false, unix.ENETUNREACH, []failure{func() failure {
			f := unreachable(event.ProtoUDP, 6, noPeer6, "[2001:db8::1]:53")
			f.autoLocal = true
			return f
		}()}},
		{"tcp6 link-local without a scope", false, unix.EINVAL, []failure{{
			kind: event.KindConnectFailed, proto: event.ProtoTCP, family: 6, local: noPeer6, remote: ap("[fe80::1]:80"),
			reason: "EINVAL", errno: unix.EINVAL, inCall: true, direction: event.DirectionOutbound, ephemeral: true}}},
		{"udp4 broadcast without SO_BROADCAST", false, unix.EACCES, []failure{{
			kind: event.KindConnectFailed, proto: event.ProtoUDP, family: 4, local: noPeer4, autoLocal: true, remote: ap("127.255.255.255:9"),
			reason: "denied", errno: unix.EACCES, inCall: true, direction: event.DirectionOutbound, ephemeral: true}}},
		{"tcp4 listener", true, unix.EPERM, []failure{{
			kind: event.KindConnectFailed, proto: event.ProtoTCP, family: 4, local: noPeer4, remote: ap("127.0.0.1:5000"),
			reason: "denied", errno: unix.EPERM, inCall: true, direction: event.DirectionOutbound, ephemeral: true}}},
		{"udp4 listener", true, unix.EPERM, []failure{{
			kind: event.KindConnectFailed, proto: event.ProtoUDP, family: 4, local: noPeer4, remote: ap("127.0.0.1:5000"),
			reason: "denied", errno: unix.EPERM, inCall: true, direction: event.DirectionOutbound, ephemeral: true}}},
		{"udp4 no port", false, unix.EAGAIN, []failure{{
			kind: event.KindConnectFailed, proto: event.ProtoUDP, family: 4, local: noPeer4, remote: ap("127.0.0.1:5000"),
			reason: "no_ephemeral_port", errno: unix.EAGAIN, inCall: true, direction: event.DirectionOutbound, ephemeral: true}}},
		{"tcp4 bind(0) no port", false, unix.EADDRINUSE, []failure{{
			kind: event.KindBindFailed, proto: event.ProtoTCP, family: 4, local: noPeer4, remote: noPeer4,
			reason: "no_ephemeral_port", errno: unix.EADDRINUSE, inCall: true, direction: event.DirectionOutbound, ephemeral: true}}},
		{"udp4 bind(0) no port", false, unix.EADDRINUSE, []failure{{
			kind: event.KindBindFailed, proto: event.ProtoUDP, family: 4, local: noPeer4, remote: noPeer4,
			reason: "no_ephemeral_port", errno: unix.EADDRINUSE, inCall: true, direction: event.DirectionOutbound, ephemeral: true}}},
		{"tcp4 bind in use", false, unix.EADDRINUSE, []failure{{
			kind: event.KindBindFailed, proto: event.ProtoTCP, family: 4, local: ap("0.0.0.0:40000"), remote: noPeer4,
			reason: "address_in_use", errno: unix.EADDRINUSE, inCall: true, direction: event.DirectionInbound, ephemeral: true}}},
		{"tcp6 bind in use, outside the range", false, unix.EADDRINUSE, []failure{{
			kind: event.KindBindFailed, proto: event.ProtoTCP, family: 6, local: ap("[::1]:5000"), remote: noPeer6,
			reason: "address_in_use", errno: unix.EADDRINUSE, inCall: true, direction: event.DirectionInbound, ephemeral: false}}},
		{"tcp4 listener", false, 0, nil},
		{"udp4 listener", false, 0, nil},
		{"successes", false, 0, nil},
		// TCP's state machine reports these; the calls' exits must not.
		{"tcp4 refused", false, unix.ECONNREFUSED, []failure{{
			kind: event.KindConnectFailed, proto: event.ProtoTCP, family: 4, local: ap("127.0.0.1:0"), autoLocal: true, remote: ap("127.0.0.1:5001"),
			reason: "refused", errno: unix.ECONNREFUSED, direction: event.DirectionOutbound, ephemeral: true}}},
		{"tcp4 refused, non-blocking, connect again", false, unix.ECONNREFUSED, []failure{{
			kind: event.KindConnectFailed, proto: event.ProtoTCP, family: 4, local: ap("127.0.0.1:0"), autoLocal: true, remote: ap("127.0.0.1:5001"),
			reason: "refused", errno: unix.ECONNREFUSED, direction: event.DirectionOutbound, ephemeral: true}}},
		{"tcp4 no port", false, unix.EADDRNOTAVAIL, []failure{{
			kind: event.KindConnectFailed, proto: event.ProtoTCP, family: 4, local: ap("127.0.0.1:0"), remote: ap("127.0.0.1:5000"),
			reason: "no_ephemeral_port", errno: unix.EADDRNOTAVAIL, direction: event.DirectionOutbound, ephemeral: true}}},
	}
	for _, tt := range tests {
		name := tt.scenario
		if tt.denied {
			name += " denied by a cgroup program"
		}
		t.Run(name, func(t *testing.T) {
			attr := &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
			if tt.denied {
				attr.UseCgroupFD, attr.CgroupFD = true, deny
			}
			// The syscall tracepoints' programs do not run while another
			// BPF program or a bpf() map call is in progress on the CPU
			// (other BPF tools, other tests); the kernel counts those
			// skipped runs. A case that missed its events is run again
			// only if the kernel says it skipped runs meanwhile: an event
			// missing without a count fails the test.
			for attempt := 1; ; attempt++ {
				skippedBefore := skipped(t, r)
				if runCallCase(t, r, tt.scenario, attr, tt.errno, tt.want) {
					return
				}
				if skipped(t, r) == skippedBefore || attempt == 3 {
					t.Fatalf("attempt %d: no sentinel event from the helper, and the kernel skipped no program run: an event was lost without a count", attempt)
				}
				t.Logf("attempt %d: the kernel skipped program runs; again", attempt)
			}
		})
	}
	r.requireNothingLost(t)
}

func skipped(t *testing.T, r *running) uint64 {
	t.Helper()
	s, err := r.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return s.SkippedRuns
}

// runCallCase runs one helper scenario and checks its failures; false if
// the helper's sentinel event never came.
func runCallCase(t *testing.T, r *running, scenario string, attr *syscall.SysProcAttr, wantErrno unix.Errno, want []failure) bool {
	t.Helper()
	{
		{
			h := startHelper(t, "calls", scenario, attr)
			var errno int
			var lport uint16
			if _, err := fmt.Sscan(h.line(t), &errno, &lport); err != nil {
				t.Fatalf("helper's result: %v", err)
			}
			if unix.Errno(errno) != wantErrno {
				t.Fatalf("the helper's call returned %v, want %v: the test does not test what it says", unix.Errno(errno), wantErrno)
			}
			netns := netnsInode(t, fmt.Sprintf("/proc/%d/ns/net", h.pid()))

			ofHelper := func(e *event.Event) bool { return e.PID == h.pid() && e.Kind.Failed() }
			isSentinel := func(e *event.Event) bool { return e.Kind == event.KindBindFailed && e.Local == sentinel }
			if _, ok := r.events.await(1, func(e *event.Event) bool { return ofHelper(e) && isSentinel(e) }, 10*time.Second); !ok {
				return false
			}
			var got []event.Event
			for _, e := range r.events.matching(ofHelper) {
				if !isSentinel(&e) {
					got = append(got, e)
				}
			}
			if len(got) != len(want) {
				t.Fatalf("%d failures reported, want %d: %+v", len(got), len(want), got)
			}
			for i, w := range want {
				e := got[i]
				key := fmt.Sprintf("%v %v", e.Kind, e.Remote)
				if w.autoLocal {
					w.local = netip.AddrPortFrom(w.local.Addr(), lport)
				}
				check(t, key, "kind", e.Kind, w.kind)
				check(t, key, "proto", e.Proto, w.proto)
				check(t, key, "family", e.Family, w.family)
				check(t, key, "local", e.Local, w.local)
				check(t, key, "remote", e.Remote, w.remote)
				check(t, key, "reason", e.Reason(), w.reason)
				check(t, key, "errno", e.Errno, w.errno)
				check(t, key, "in call", e.InCall, w.inCall)
				check(t, key, "direction", e.Direction, w.direction)
				check(t, key, "ephemeral", e.Ephemeral, w.ephemeral)
				wantSource := event.PIDSourceConnect
				if w.kind == event.KindBindFailed {
					wantSource = event.PIDSourceBind
				}
				check(t, key, "pid source", e.PIDSource, wantSource)
				check(t, key, "comm", e.Comm.String(), callsComm)
				check(t, key, "netns", e.NetNS, netns)
				if e.Start.IsZero() || e.Time.Before(e.Start) {
					t.Errorf("%s: start %v, time %v: want the call's start, then its end", key, e.Start, e.Time)
				}
			}
		}
	}
	return true
}

// sentinel is the helper's last call: a UDP bind to an address that is not
// the namespace's. (A connect would meet the cases' refusals and exhaustion.)
var sentinel = ap("10.255.255.254:9")

// denyConnectCgroup makes a cgroup whose connect4 program refuses every
// IPv4 connect() with EPERM, as a policy agent would, and returns a
// descriptor of it for a helper to start in.
func denyConnectCgroup(t *testing.T) int {
	t.Helper()
	requireRoot(t)
	root, err := cgroup2Mount("/proc/mounts")
	if err != nil || root == "" {
		t.Fatalf("no cgroup v2 mount (%v)", err)
	}
	dir := filepath.Join(root, fmt.Sprintf("portlife-test-deny-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Remove(dir); err != nil {
			t.Errorf("removing the test's cgroup: %v", err)
		}
	})
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.CGroupSockAddr,
		AttachType:   ebpf.AttachCGroupInet4Connect,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}, // 0: refuse
	})
	if err != nil {
		t.Fatalf("loading the deny program: %v", err)
	}
	t.Cleanup(func() { prog.Close() })
	l, err := link.AttachCgroup(link.CgroupOptions{Path: dir, Attach: ebpf.AttachCGroupInet4Connect, Program: prog})
	if err != nil {
		t.Fatalf("attaching the deny program: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	fd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// failCalls runs in a network namespace of its own, with loopback up, no
// other route and the ephemeral range 40000-40009, and a TCP listener on
// 127.0.0.1:5000 (none on 5001). It makes the calls of one scenario,
// prints the last call's errno (0 for success) and the socket's local port
// after it, makes the sentinel call, and waits for stdin to close. It is
// named pl-calls, and makes its calls from that thread.
func failCalls(scenario string) error {
	if err := setComm(callsComm); err != nil {
		return err
	}
	if err := kerneltest.LinkUp("lo"); err != nil {
		return err
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte(fmt.Sprint(rangeLo, rangeHi)), 0); err != nil {
		return err
	}
	ln, err := listenTCP4(5000)
	if err != nil {
		return err
	}
	defer unix.Close(ln)
	run, ok := callScenarios[scenario]
	if !ok {
		return fmt.Errorf("no scenario %q", scenario)
	}
	c := &calls{}
	defer c.closeAll()
	errno, fd := run(c)
	if c.err != nil {
		return c.err
	}
	var lport uint16
	if fd >= 0 {
		lport = sockPort(fd)
	}
	fmt.Println(int(errno), lport)
	if e := c.bind(c.socket(unix.AF_INET, unix.SOCK_DGRAM), sentinel); e != unix.EADDRNOTAVAIL {
		return fmt.Errorf("the sentinel bind returned %v, want EADDRNOTAVAIL", e)
	}
	io.Copy(io.Discard, os.Stdin)
	return nil
}

// calls makes raw syscalls, so that each is exactly one, and keeps the
// first unexpected error.
type calls struct {
	fds []int
	err error
}

func (c *calls) fail(err error) {
	if c.err == nil {
		c.err = err
	}
}

func (c *calls) socket(af, typ int) int {
	fd, err := unix.Socket(af, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		c.fail(err)
		return -1
	}
	c.fds = append(c.fds, fd)
	return fd
}

func (c *calls) closeAll() {
	for _, fd := range c.fds {
		unix.Close(fd)
	}
}

func sockaddr(a netip.AddrPort) unix.Sockaddr {
	if a.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(a.Port()), Addr: a.Addr().As4()}
	}
	return &unix.SockaddrInet6{Port: int(a.Port()), Addr: a.Addr().As16()}
}

func errnoOf(err error) unix.Errno {
	if err == nil {
		return 0
	}
	if e, ok := err.(unix.Errno); ok {
		return e
	}
	return unix.EIO
}

func (c *calls) connect(fd int, to netip.AddrPort) unix.Errno {
	return errnoOf(unix.Connect(fd, sockaddr(to)))
}

func (c *calls) bind(fd int, to netip.AddrPort) unix.Errno {
	return errnoOf(unix.Bind(fd, sockaddr(to)))
}

// must expects a call to succeed.
func (c *calls) must(e unix.Errno, what string) {
	if e != 0 {
		c.fail(fmt.Errorf("%s: %v", what, e))
	}
}

func sockPort(fd int) uint16 {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return 0
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return uint16(sa.Port)
	case *unix.SockaddrInet6:
		return uint16(sa.Port)
	}
	return 0
}

func listenTCP4(port int) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if err := unix.Listen(fd, 16); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// callScenarios each make calls and return the last one's errno and the
// socket to print the local port of (-1 for none).
var callScenarios = map[string]func(c *calls) (unix.Errno, int){
	"tcp4 unroutable": oneConnect(unix.AF_INET, unix.SOCK_STREAM, "10.255.0.1:80"),
	"tcp6 unroutable": oneConnect(unix.AF_INET6, unix.SOCK_STREAM, "[2001:db8::1]:80"),
	"udp4 unroutable": oneConnect(unix.AF_INET, unix.SOCK_DGRAM, "10.255.0.1:53"),
	"udp6 unroutable": oneConnect(unix.AF_INET6, unix.SOCK_DGRAM, "[2001:db8::1]:53"),
	// Link-local needs the interface: EINVAL before any route is looked up.
	"tcp6 link-local without a scope": oneConnect(unix.AF_INET6, unix.SOCK_STREAM, "[fe80::1]:80"),
	// Loopback's broadcast address is routed, and refused to a socket
	// without SO_BROADCAST.
	"udp4 broadcast without SO_BROADCAST": oneConnect(unix.AF_INET, unix.SOCK_DGRAM, "127.255.255.255:9"),
	"tcp4 listener":                       oneConnect(unix.AF_INET, unix.SOCK_STREAM, "127.0.0.1:5000"),
	"udp4 listener":                       oneConnect(unix.AF_INET, unix.SOCK_DGRAM, "127.0.0.1:5000"),
	"udp4 no port": func(c *calls) (unix.Errno, int) {
		holdPorts(c, unix.SOCK_DGRAM)
		fd := c.socket(unix.AF_INET, unix.SOCK_DGRAM)
		return c.connect(fd, ap("127.0.0.1:5000")), fd
	},
	"tcp4 bind(0) no port": func(c *calls) (unix.Errno, int) {
		holdPorts(c, unix.SOCK_STREAM)
		fd := c.socket(unix.AF_INET, unix.SOCK_STREAM)
		return c.bind(fd, ap("0.0.0.0:0")), fd
	},
	"udp4 bind(0) no port": func(c *calls) (unix.Errno, int) {
		holdPorts(c, unix.SOCK_DGRAM)
		fd := c.socket(unix.AF_INET, unix.SOCK_DGRAM)
		return c.bind(fd, ap("0.0.0.0:0")), fd
	},
	"tcp4 bind in use": func(c *calls) (unix.Errno, int) {
		c.must(c.bind(c.socket(unix.AF_INET, unix.SOCK_STREAM), ap("0.0.0.0:40000")), "first bind")
		fd := c.socket(unix.AF_INET, unix.SOCK_STREAM)
		return c.bind(fd, ap("0.0.0.0:40000")), -1
	},
	"tcp6 bind in use, outside the range": func(c *calls) (unix.Errno, int) {
		c.must(c.bind(c.socket(unix.AF_INET6, unix.SOCK_STREAM), ap("[::1]:5000")), "first bind")
		fd := c.socket(unix.AF_INET6, unix.SOCK_STREAM)
		return c.bind(fd, ap("[::1]:5000")), -1
	},
	// Every kind of call that succeeds, or does not fail.
	"successes": func(c *calls) (unix.Errno, int) {
		c.must(c.connect(c.socket(unix.AF_INET, unix.SOCK_STREAM), ap("127.0.0.1:5000")), "tcp connect")
		c.must(c.connect(c.socket(unix.AF_INET6, unix.SOCK_STREAM), ap("[::ffff:127.0.0.1]:5000")), "v4-mapped tcp connect")
		c.must(c.connect(c.socket(unix.AF_INET, unix.SOCK_DGRAM), ap("127.0.0.1:5000")), "udp connect")
		c.must(c.bind(c.socket(unix.AF_INET6, unix.SOCK_DGRAM), ap("[::1]:0")), "udp bind(0)")
		c.must(c.bind(c.socket(unix.AF_INET, unix.SOCK_DGRAM), ap("127.0.0.1:6000")), "udp bind")
		nb := c.socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK)
		if e := c.connect(nb, ap("127.0.0.1:5000")); e != unix.EINPROGRESS && e != 0 {
			c.fail(fmt.Errorf("non-blocking connect: %v", e))
		}
		waitWritable(c, nb)
		// The next connect() completes it; the one after is EISCONN, which
		// is not a failure either.
		c.must(c.connect(nb, ap("127.0.0.1:5000")), "connect again")
		if e := c.connect(nb, ap("127.0.0.1:5000")); e != unix.EISCONN {
			c.fail(fmt.Errorf("connect a third time: %v, want EISCONN", e))
		}
		udp := c.socket(unix.AF_INET, unix.SOCK_DGRAM)
		c.must(c.connect(udp, ap("127.0.0.1:5000")), "udp connect")
		c.must(connectUnspec(udp), "udp disconnect")
		return 0, -1
	},
	"tcp4 refused": func(c *calls) (unix.Errno, int) {
		fd := c.socket(unix.AF_INET, unix.SOCK_STREAM)
		return c.connect(fd, ap("127.0.0.1:5001")), fd
	},
	// The second connect() returns the error of the first, which TCP's
	// state machine reported when it happened.
	"tcp4 refused, non-blocking, connect again": func(c *calls) (unix.Errno, int) {
		fd := c.socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK)
		if e := c.connect(fd, ap("127.0.0.1:5001")); e != unix.EINPROGRESS && e != unix.ECONNREFUSED {
			c.fail(fmt.Errorf("non-blocking connect: %v", e))
		}
		waitWritable(c, fd)
		return c.connect(fd, ap("127.0.0.1:5001")), fd
	},
	// Connections take every port of the range; the next connect finds
	// none, past SYN_SENT.
	"tcp4 no port": func(c *calls) (unix.Errno, int) {
		for i := rangeLo; i <= rangeHi; i++ {
			c.must(c.connect(c.socket(unix.AF_INET, unix.SOCK_STREAM), ap("127.0.0.1:5000")), "connect")
		}
		fd := c.socket(unix.AF_INET, unix.SOCK_STREAM)
		return c.connect(fd, ap("127.0.0.1:5000")), -1
	},
}

// connectUnspec dissolves a UDP socket's association: connect(AF_UNSPEC),
// which x/sys/unix has no Sockaddr for.
func connectUnspec(fd int) unix.Errno {
	var sa [16]byte // sa_family AF_UNSPEC (0), then nothing
	_, _, e := unix.Syscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa[0])), uintptr(len(sa)))
	return e
}

func oneConnect(af, typ int, to string) func(c *calls) (unix.Errno, int) {
	return func(c *calls) (unix.Errno, int) {
		fd := c.socket(af, typ)
		return c.connect(fd, ap(to)), fd
	}
}

// The helper namespace's ephemeral range: small, to be used up.
const rangeLo, rangeHi = 40000, 40009

// holdPorts binds every port of the range by number.
func holdPorts(c *calls, typ int) {
	for p := rangeLo; p <= rangeHi; p++ {
		c.must(c.bind(c.socket(unix.AF_INET, typ), netip.AddrPortFrom(any4, uint16(p))), fmt.Sprint("binding ", p))
	}
}

func waitWritable(c *calls, fd int) {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	if _, err := unix.Poll(fds, 5000); err != nil {
		c.fail(err)
	}
}

// callsComm is the name the helper gives itself, which the tracer filters on.
const callsComm = "pl-calls"
