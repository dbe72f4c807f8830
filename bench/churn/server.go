package main

import (
	"fmt"
	"net/netip"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

type server struct {
	fd     int
	addr   netip.AddrPort
	served atomic.Int64
}

// startServer binds, listens and starts the handler goroutines. It returns
// once the socket accepts connections, so the address can be published.
func startServer(sf serverFlags) (*server, error) {
	ap, err := netip.ParseAddrPort(sf.addr)
	if err != nil {
		return nil, fmt.Errorf("parse --addr: %w", err)
	}
	var typ int
	switch sf.proto {
	case "tcp":
		typ = unix.SOCK_STREAM
	case "udp":
		typ = unix.SOCK_DGRAM
	default:
		return nil, fmt.Errorf("unknown --proto %q", sf.proto)
	}
	fd, err := bindSocket(ap, typ)
	if err != nil {
		return nil, err
	}
	srv := &server{fd: fd}
	if typ == unix.SOCK_STREAM {
		// The full somaxconn backlog absorbs bursts when all handlers are busy.
		if err := unix.Listen(fd, 4096); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("listen: %w", err)
		}
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("getsockname: %w", err)
	}
	if srv.addr, err = fromSockaddr(sa); err != nil {
		unix.Close(fd)
		return nil, err
	}
	for range max(1, sf.handlers) {
		if typ == unix.SOCK_STREAM {
			go srv.acceptLoop(sf.bufSize, sf.activeClose, sf.noDelay)
		} else {
			go srv.udpLoop(sf.bufSize)
		}
	}
	return srv, nil
}

func bindSocket(ap netip.AddrPort, typ int) (int, error) {
	sa, family := sockaddr(ap)
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("set SO_REUSEADDR: %w", err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind %s: %w", ap, err)
	}
	return fd, nil
}

// acceptLoop handles one connection at a time; concurrency comes from
// running many loops on the same listening socket, which the kernel wakes
// one at a time.
func (s *server) acceptLoop(bufSize, activeClose int, noDelay bool) {
	buf := make([]byte, max(1, bufSize))
	for {
		cfd, err := accept(s.fd)
		if err != nil {
			// EMFILE and friends are transient under churn; the client
			// counts the resulting failures, so just keep going.
			continue
		}
		if noDelay {
			// A failure only risks a delayed echo, which the client's
			// round-trip rate would show.
			unix.SetsockoptInt(cfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		}
		echo(cfd, buf, activeClose)
		unix.Close(cfd)
		s.served.Add(1)
	}
}

// echo copies input back until the client closes, or until limit bytes are
// echoed when limit > 0. By default the client closes first, which keeps
// TIME_WAIT on the client side where loopback port reuse applies.
func echo(fd int, buf []byte, limit int) {
	for done := 0; limit <= 0 || done < limit; {
		chunk := buf
		if limit > 0 {
			chunk = buf[:min(len(buf), limit-done)]
		}
		n, err := unix.Read(fd, chunk)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			return
		}
		if writeAll(fd, buf[:n]) != nil {
			return
		}
		done += n
	}
}

func (s *server) udpLoop(bufSize int) {
	buf := make([]byte, max(1, bufSize))
	for {
		n, from, err := unix.Recvfrom(s.fd, buf, 0)
		if err != nil {
			continue
		}
		if unix.Sendto(s.fd, buf[:n], 0, from) == nil {
			s.served.Add(1)
		}
	}
}
