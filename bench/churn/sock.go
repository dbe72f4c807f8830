package main

import (
	"errors"
	"fmt"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sockaddr converts an address to the x/sys form. Each worker needs its own
// copy because unix.Connect marshals into a buffer inside the struct.
func sockaddr(ap netip.AddrPort) (unix.Sockaddr, int) {
	if ap.Addr().Is4() || ap.Addr().Is4In6() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().Unmap().As4()}, unix.AF_INET
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}, unix.AF_INET6
}

func fromSockaddr(sa unix.Sockaddr) (netip.AddrPort, error) {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)), nil
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)), nil
	}
	return netip.AddrPort{}, fmt.Errorf("unexpected socket address %T", sa)
}

// localPort is getsockname without the allocation unix.Getsockname makes;
// it runs once per connection on the client's hot path.
func localPort(fd int) (uint16, error) {
	var rsa unix.RawSockaddrAny
	l := uint32(unix.SizeofSockaddrAny)
	_, _, e := unix.RawSyscall(unix.SYS_GETSOCKNAME, uintptr(fd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&l)))
	if e != 0 {
		return 0, e
	}
	// sin_port and sin6_port sit at the same offset, in network byte order.
	p := (*[2]byte)(unsafe.Pointer(&rsa.Addr.Data[0]))
	return uint16(p[0])<<8 | uint16(p[1]), nil
}

// accept is accept4 without asking for the peer address, so it does not
// allocate a Sockaddr per connection.
func accept(fd int) (int, error) {
	nfd, _, e := unix.Syscall6(unix.SYS_ACCEPT4, uintptr(fd), 0, 0, unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(nfd), nil
}

// readFull retries EINTR because sockets with SO_RCVTIMEO return it instead
// of restarting when the Go runtime's signals (preemption, profiling) arrive.
func readFull(fd int, buf []byte) error {
	for off := 0; off < len(buf); {
		n, err := unix.Read(fd, buf[off:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return errShortEcho
		}
		off += n
	}
	return nil
}

func writeAll(fd int, buf []byte) error {
	for off := 0; off < len(buf); {
		n, err := unix.Write(fd, buf[off:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		off += n
	}
	return nil
}

func connect(fd int, sa unix.Sockaddr) error {
	for {
		err := unix.Connect(fd, sa)
		// A restarted blocking connect waits for the handshake in progress;
		// EISCONN then means that handshake has finished.
		if err == unix.EINTR || err == unix.EALREADY {
			continue
		}
		if err == unix.EISCONN {
			return nil
		}
		return err
	}
}

var errShortEcho = errors.New("short echo")

// errName gives a compact, stable name for error counting.
func errName(err error) string {
	var errno unix.Errno
	if errors.As(err, &errno) {
		if name := unix.ErrnoName(errno); name != "" {
			return name
		}
	}
	if errors.Is(err, errShortEcho) {
		return "short_echo"
	}
	return err.Error()
}
