package timewait

import (
	"encoding/binary"
	"fmt"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sock_diag's legacy request, TCPDIAG_GETSOCK: unlike SOCK_DIAG_BY_FAMILY,
// which names one family, it dumps IPv4 and IPv6 sockets (dual-stack ones
// included) in one walk of the kernel's table, and that walk is the cost of
// a sweep.
const (
	tcpdiagGetsock = 18
	tcpFinWait2    = 5
	tcpTimeWait    = 6
	// timerTimeWait is idiag_timer of a timewait socket.
	timerTimeWait = 3
)

// inetDiagReq is struct inet_diag_req (linux/inet_diag.h).
type inetDiagReq struct {
	Family uint8
	SrcLen uint8
	DstLen uint8
	Ext    uint8
	ID     inetDiagSockID
	States uint32
	DBs    uint32
}

// inetDiagSockID is struct inet_diag_sockid.
type inetDiagSockID struct {
	Sport  [2]byte
	Dport  [2]byte
	Src    [16]byte
	Dst    [16]byte
	If     uint32
	Cookie [2]uint32
}

// inetDiagMsg is struct inet_diag_msg.
type inetDiagMsg struct {
	Family  uint8
	State   uint8
	Timer   uint8
	Retrans uint8
	ID      inetDiagSockID
	Expires uint32 // ms until the timer fires; for TIME_WAIT, its end
	Rqueue  uint32
	Wqueue  uint32
	UID     uint32
	Inode   uint32
}

const sizeofMsg = int(unsafe.Sizeof(inetDiagMsg{}))

// sighting is one TIME_WAIT socket a sweep found.
type sighting struct {
	cookie  uint64
	expires time.Duration // until its timer is due
}

// dumpTimeWait lists the namespace's TIME_WAIT sockets into out (reused),
// with one request and the kernel's replies read into buf (reused).
func (h *nsHandle) dumpTimeWait(out []sighting, buf []byte) ([]sighting, []byte, error) {
	var req struct {
		hdr unix.NlMsghdr
		req inetDiagReq
	}
	req.hdr = unix.NlMsghdr{
		Len:   uint32(unsafe.Sizeof(req)),
		Type:  tcpdiagGetsock,
		Flags: unix.NLM_F_REQUEST | unix.NLM_F_DUMP,
		Seq:   1,
	}
	// The kernel filters a timewait socket by its substate: FIN_WAIT2
	// until the peer's FIN comes (an orphan that closed before it), then
	// TIME_WAIT. Full sockets in FIN_WAIT2 match too, and are told apart by
	// their timer.
	req.req = inetDiagReq{States: 1<<tcpTimeWait | 1<<tcpFinWait2}
	b := (*[unsafe.Sizeof(req)]byte)(unsafe.Pointer(&req))[:]
	if err := unix.Sendto(h.diag, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return out, buf, fmt.Errorf("sock_diag request: %w", err)
	}
	if len(buf) < 32<<10 {
		buf = make([]byte, 32<<10) // the kernel fills at most 32 KiB a reply
	}
	for {
		n, _, err := unix.Recvfrom(h.diag, buf, 0)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return out, buf, fmt.Errorf("sock_diag reply: %w", err)
		}
		b := buf[:n]
		for len(b) >= unix.NLMSG_HDRLEN {
			hdr := (*unix.NlMsghdr)(unsafe.Pointer(&b[0]))
			l := int(hdr.Len)
			if l < unix.NLMSG_HDRLEN || l > len(b) {
				return out, buf, fmt.Errorf("sock_diag reply: a message of %d bytes in %d", l, len(b))
			}
			switch hdr.Type {
			case unix.NLMSG_DONE:
				return out, buf, nil
			case unix.NLMSG_ERROR:
				if l >= unix.NLMSG_HDRLEN+4 {
					if errno := int32(binary.NativeEndian.Uint32(b[unix.NLMSG_HDRLEN:])); errno != 0 {
						return out, buf, fmt.Errorf("sock_diag: %w", unix.Errno(-errno))
					}
				}
				return out, buf, nil
			}
			if l >= unix.NLMSG_HDRLEN+sizeofMsg {
				// A timewait socket in FIN_WAIT2 waits tcp_fin_timeout
				// for the peer's FIN, then TIME_WAIT's 60 s once it comes.
				m := (*inetDiagMsg)(unsafe.Pointer(&b[unix.NLMSG_HDRLEN]))
				if m.Timer == timerTimeWait {
					out = append(out, sighting{
						cookie:  uint64(m.ID.Cookie[0]) | uint64(m.ID.Cookie[1])<<32,
						expires: time.Duration(m.Expires) * time.Millisecond,
					})
				}
			}
			al := (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
			if al > len(b) {
				break
			}
			b = b[al:]
		}
	}
}
