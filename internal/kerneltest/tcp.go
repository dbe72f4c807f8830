package kerneltest

import (
	"fmt"
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// Loopback4 is 127.0.0.1, for raw socket addresses.
var Loopback4 = [4]byte{127, 0, 0, 1}

// ListenLoopback listens on 127.0.0.1 at a port the kernel picks, in the
// calling thread's network namespace, and returns the descriptor and the
// port.
func ListenLoopback(backlog int) (int, uint16, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, 0, err
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: Loopback4}); err != nil {
		unix.Close(fd)
		return -1, 0, err
	}
	if err := unix.Listen(fd, backlog); err != nil {
		unix.Close(fd)
		return -1, 0, err
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return -1, 0, err
	}
	return fd, uint16(sa.(*unix.SockaddrInet4).Port), nil
}

// CloseFirst makes one connection to 127.0.0.1:port, accepted from its
// listener ln, from src (nil: a port connect() picks), and closes our side
// first: the server reads our FIN and closes, and our side reads the
// server's FIN, so it is in TIME_WAIT, not FIN_WAIT2, before it is closed
// and when CloseFirst returns. It returns our local port. Our socket has
// SO_REUSEADDR, as a bind to the port of a TIME_WAIT needs.
func CloseFirst(ln int, port uint16, src *unix.SockaddrInet4) (uint16, error) {
	c, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(c)
	if err := unix.SetsockoptInt(c, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return 0, err
	}
	if src != nil {
		if err := unix.Bind(c, src); err != nil {
			return 0, fmt.Errorf("binding %v:%d: %w", src.Addr, src.Port, err)
		}
	}
	if err := unix.Connect(c, &unix.SockaddrInet4{Addr: Loopback4, Port: int(port)}); err != nil {
		return 0, fmt.Errorf("connecting: %w", err)
	}
	s, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC)
	if err != nil {
		return 0, err
	}
	sa, err := unix.Getsockname(c)
	if err != nil {
		unix.Close(s)
		return 0, err
	}
	if err := unix.Shutdown(c, unix.SHUT_WR); err != nil {
		unix.Close(s)
		return 0, err
	}
	var b [1]byte
	if n, err := unix.Read(s, b[:]); n != 0 || err != nil {
		unix.Close(s)
		return 0, fmt.Errorf("server read: %d, %v", n, err)
	}
	if err := unix.Close(s); err != nil {
		return 0, err
	}
	if n, err := unix.Read(c, b[:]); n != 0 || err != nil {
		return 0, fmt.Errorf("client read: %d, %v", n, err)
	}
	return uint16(sa.(*unix.SockaddrInet4).Port), nil
}

// TCPPair is one established loopback TCP connection: the client's end
// and the server's. The listener is closed once the server's end is
// accepted; both ends are closed when the test ends.
func TCPPair(t testing.TB) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return client, server
}
