package tracer

import (
	"errors"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// stalled is a connect() on loopback that stays in SYN_SENT: its listener's
// accept queue is full, so the kernel drops its SYNs, and it retries.
type stalled struct {
	fd             int // the connecting socket
	local, remote  netip.AddrPort
	listener, held int // the listener, and the connection that fills its queue
}

// stallConnect starts a connect that stalls until unblock or timeOut; the
// test's cleanup closes everything.
func stallConnect(t *testing.T) *stalled {
	t.Helper()
	loopback := [4]byte{127, 0, 0, 1}
	s := &stalled{}
	s.listener = tcpSocket(t)
	if err := unix.Bind(s.listener, &unix.SockaddrInet4{Addr: loopback}); err != nil {
		t.Fatal(err)
	}
	// A backlog of 0 holds one connection waiting to be accepted.
	if err := unix.Listen(s.listener, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(s.listener)
	if err != nil {
		t.Fatal(err)
	}
	dst := &unix.SockaddrInet4{Port: sa.(*unix.SockaddrInet4).Port, Addr: loopback}
	s.remote = netip.AddrPortFrom(netip.AddrFrom4(loopback), uint16(dst.Port))
	s.held = tcpSocket(t)
	if err := unix.Connect(s.held, dst); err != nil {
		t.Fatalf("filling the accept queue: %v", err)
	}

	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	s.fd = fd
	t.Cleanup(s.close)
	if err := unix.Connect(s.fd, dst); !errors.Is(err, unix.EINPROGRESS) {
		t.Fatalf("connect: %v, want EINPROGRESS", err)
	}
	sa, err = unix.Getsockname(s.fd)
	if err != nil {
		t.Fatal(err)
	}
	s.local = netip.AddrPortFrom(netip.AddrFrom4(loopback), uint16(sa.(*unix.SockaddrInet4).Port))
	if state := tcpState(t, s.fd); state != stateSynSent {
		t.Fatalf("the connect is in TCP state %d, want SYN_SENT (%d): its SYN was not dropped", state, stateSynSent)
	}
	return s
}

// TCP states (include/net/tcp_states.h), as TCP_INFO reports them.
const (
	stateSynSent = 2
	stateClose   = 7
)

func tcpSocket(t *testing.T) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func tcpState(t *testing.T, fd int) uint8 {
	t.Helper()
	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		t.Fatal(err)
	}
	return info.State
}

// unblock makes room in the accept queue: the next SYN the connect
// retransmits is answered.
func (s *stalled) unblock(t *testing.T) {
	t.Helper()
	fd, _, err := unix.Accept4(s.listener, unix.SOCK_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
}

// close closes the connecting socket, once.
func (s *stalled) close() {
	if s.fd >= 0 {
		unix.Close(s.fd)
		s.fd = -1
	}
}

// timeOut makes the connect give up at its next retransmission: ETIMEDOUT.
func (s *stalled) timeOut(t *testing.T) {
	t.Helper()
	if err := unix.SetsockoptInt(s.fd, unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, 1); err != nil {
		t.Fatal(err)
	}
}
