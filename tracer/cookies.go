package tracer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// giveCookies has the kernel give every TCP socket of each namespace its
// cookie before the start-up iterator reads it, where tracing programs
// cannot ask for one (GAP_SOCKET_COOKIE, before Linux 5.12). The programs on
// the cgroup v2 root do it for the sockets made after start; a sock_diag
// listing does it for those from before, as it shows each socket's cookie,
// made then if the socket had none. A namespace that cannot be listed (no
// tcp_diag module) keeps the stand-in, the socket's address, for its
// sockets from before start: said once, as no event is lost.
func (t *Tracer) giveCookies(namespaces []netnsRef) {
	var errs []error
	for _, ns := range namespaces {
		if err := inNetns(ns, listTCP); err != nil {
			errs = append(errs, fmt.Errorf("netns %d: %w", ns.ino, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		t.log.Warn("TCP sockets from before start carry their kernel address as sock_cookie, not the cookie sock_diag shows: "+
			"listing them failed (load the tcp_diag module)", zap.Error(err))
	}
}

// listTCP lists the TCP sockets of the caller's network namespace with
// sock_diag (IPv4, then IPv6, every state), reading and discarding the
// replies.
func listTCP() error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return fmt.Errorf("sock_diag socket: %w", err)
	}
	defer unix.Close(fd)
	buf := make([]byte, 32<<10)
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		if err := dumpTCP(fd, family, buf); err != nil {
			return err
		}
	}
	return nil
}

// The request: a netlink header and an inet_diag_req_v2 (linux/inet_diag.h).
const (
	sockDiagByFamily = 20
	diagReqLen       = unix.SizeofNlMsghdr + 56
)

func dumpTCP(fd int, family uint8, buf []byte) error {
	req := make([]byte, diagReqLen)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], diagReqLen)
	ne.PutUint16(req[4:], sockDiagByFamily)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], 1) // sequence
	req[16], req[17] = family, unix.IPPROTO_TCP
	ne.PutUint32(req[20:], ^uint32(0)) // every state
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("sock_diag request: %w", err)
	}
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return fmt.Errorf("sock_diag reply: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("sock_diag reply: %w", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := int32(ne.Uint32(m.Data)); errno != 0 {
						return fmt.Errorf("sock_diag: %w", unix.Errno(-errno))
					}
				}
				return nil
			}
		}
	}
}
