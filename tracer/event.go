package tracer

import (
	"fmt"
	"net/netip"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Kind says what happened to a port.
type Kind uint8

const (
	KindOpen          = Kind(portlifeEventKindEVENT_OPEN)
	KindClose         = Kind(portlifeEventKindEVENT_CLOSE)
	KindConnectFailed = Kind(portlifeEventKindEVENT_CONNECT_FAILED)
)

var kindNames = [...]string{KindOpen: "open", KindClose: "close", KindConnectFailed: "connect_failed"}

func (k Kind) String() string { return name(kindNames[:], int(k)) }

// Kinds lists every event kind, in the order of the README.
var Kinds = []Kind{KindOpen, KindClose, KindConnectFailed}

// ParseKind is the inverse of Kind.String.
func ParseKind(s string) (Kind, error) {
	for _, k := range Kinds {
		if k.String() == s {
			return k, nil
		}
	}
	return 0, fmt.Errorf("unknown event %q: want open, close or connect_failed", s)
}

// Proto is the transport protocol, by its IP protocol number.
type Proto uint8

const (
	ProtoTCP Proto = unix.IPPROTO_TCP
	ProtoUDP Proto = unix.IPPROTO_UDP
)

func (p Proto) String() string {
	switch p {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	}
	return "unknown"
}

// Direction says which side initiated the connection.
type Direction uint8

const (
	DirectionUnknown  = Direction(portlifeDirectionDIRECTION_UNKNOWN)
	DirectionOutbound = Direction(portlifeDirectionDIRECTION_OUTBOUND)
	DirectionInbound  = Direction(portlifeDirectionDIRECTION_INBOUND)
)

var directionNames = [...]string{DirectionUnknown: "unknown", DirectionOutbound: "outbound", DirectionInbound: "inbound"}

func (d Direction) String() string { return name(directionNames[:], int(d)) }

// PIDSource says how the process in an event was learned.
type PIDSource uint8

const (
	PIDSourceUnknown  = PIDSource(portlifePidSourcePID_SOURCE_UNKNOWN)
	PIDSourceConnect  = PIDSource(portlifePidSourcePID_SOURCE_CONNECT)
	PIDSourceListener = PIDSource(portlifePidSourcePID_SOURCE_LISTENER)
	PIDSourceClose    = PIDSource(portlifePidSourcePID_SOURCE_CLOSE)
	PIDSourceSocket   = PIDSource(portlifePidSourcePID_SOURCE_SOCKET)
	PIDSourceFDOwner  = PIDSource(portlifePidSourcePID_SOURCE_FD_OWNER)
)

var pidSourceNames = [...]string{
	PIDSourceUnknown:  "unknown",
	PIDSourceConnect:  "connect",
	PIDSourceListener: "listener",
	PIDSourceClose:    "close",
	PIDSourceSocket:   "socket",
	PIDSourceFDOwner:  "fd_owner",
}

func (s PIDSource) String() string { return name(pidSourceNames[:], int(s)) }

// ClosedBy says which side ended a connection first.
type ClosedBy uint8

const (
	ClosedByUnknown = ClosedBy(portlifeClosedByCLOSED_BY_UNKNOWN)
	ClosedByLocal   = ClosedBy(portlifeClosedByCLOSED_BY_LOCAL)
	ClosedByRemote  = ClosedBy(portlifeClosedByCLOSED_BY_REMOTE)
)

var closedByNames = [...]string{ClosedByUnknown: "unknown", ClosedByLocal: "local", ClosedByRemote: "remote"}

func (c ClosedBy) String() string { return name(closedByNames[:], int(c)) }

func name(names []string, i int) string {
	if i < len(names) && names[i] != "" {
		return names[i]
	}
	return "unknown"
}

// Comm is a task's command name as the kernel keeps it: at most 15 bytes.
type Comm [16]byte

// Bytes returns the name without its NUL padding, without allocating.
func (c *Comm) Bytes() []byte {
	for i, b := range c {
		if b == 0 {
			return c[:i]
		}
	}
	return c[:]
}

func (c *Comm) String() string { return string(c.Bytes()) }

// Event is one port lifetime event, decoded from the kernel's record.
type Event struct {
	Kind        Kind
	Proto       Proto
	Family      int       // 4 or 6: the address family on the wire (v4-mapped IPv6 is 4)
	Time        time.Time // when it happened; for close, when the port was released
	Start       time.Time // when the lifetime began; zero if before tracing
	Established time.Time // when the handshake completed; zero if never

	PID       uint32
	TID       uint32
	UID       uint32
	Comm      Comm
	CgroupID  uint64
	NetNS     uint32
	PIDSource PIDSource

	Local     netip.AddrPort
	Remote    netip.AddrPort
	Direction Direction
	Ephemeral bool // the ephemeral side's port lies in its netns's ip_local_port_range
	Cookie    uint64

	TxBytes      uint64
	RxBytes      uint64
	TxPackets    uint32
	RxPackets    uint32
	Retransmits  uint32
	Destinations uint32
	ClosedBy     ClosedBy
	Reset        bool
	TimeWait     bool
	PreExisting  bool
	Connected    bool // UDP: the peer was fixed by connect()

	Errno unix.Errno // connect_failed: the error connect() reported, 0 if none
}

// Duration is how long the port lived (close) or the connect tried
// (connect_failed). It is 0 when the start was not seen.
func (e *Event) Duration() time.Duration {
	if e.Start.IsZero() {
		return 0
	}
	return e.Time.Sub(e.Start)
}

// ConnectLatency is the time from connect() to the completed handshake.
func (e *Event) ConnectLatency() time.Duration {
	if e.Start.IsZero() || e.Established.IsZero() || e.Direction != DirectionOutbound {
		return 0
	}
	return e.Established.Sub(e.Start)
}

// Reason says why a connect failed, in words a runbook can match on.
// Strings are constants, so this never allocates.
func (e *Event) Reason() string {
	switch {
	case e.Kind != KindConnectFailed:
		return ""
	case e.Local.Port() == 0:
		// No local port could be allocated: connect() returned EADDRNOTAVAIL.
		return "no_ephemeral_port"
	case e.Errno == unix.ECONNREFUSED:
		return "refused"
	case e.Errno == unix.ETIMEDOUT:
		return "timeout"
	case e.Errno == unix.EHOSTUNREACH, e.Errno == unix.ENETUNREACH:
		return "unreachable"
	case e.Errno == 0:
		return "aborted"
	}
	if n := unix.ErrnoName(e.Errno); n != "" {
		return n
	}
	return "error"
}

// decoder turns kernel records into Events. The kernel's clock is
// CLOCK_BOOTTIME; bootTime anchors it to the wall clock once, at start.
type decoder struct {
	bootTime time.Time
}

func newDecoder() (decoder, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return decoder{}, fmt.Errorf("reading CLOCK_BOOTTIME: %w", err)
	}
	return decoder{bootTime: time.Now().Add(-time.Duration(ts.Nano()))}, nil
}

const recordSize = int(unsafe.Sizeof(portlifeEvent{}))

// decode fills ev from raw. The record is the C struct event, which bpf2go
// generated portlifeEvent from, in host byte order: a cast reads it without
// reflection or copies.
func (d *decoder) decode(raw []byte, ev *Event) error {
	if len(raw) < recordSize {
		return fmt.Errorf("short event record: %d bytes, want %d", len(raw), recordSize)
	}
	r := (*portlifeEvent)(unsafe.Pointer(&raw[0]))

	*ev = Event{
		Kind:         Kind(r.Kind),
		Proto:        Proto(r.Proto),
		Time:         d.clock(r.EndNs),
		Start:        d.clock(r.StartNs),
		Established:  d.clock(r.EstablishedNs),
		PID:          r.Pid,
		TID:          r.Tid,
		UID:          r.Uid,
		CgroupID:     r.CgroupId,
		NetNS:        r.Netns,
		PIDSource:    PIDSource(r.PidSource),
		Local:        netip.AddrPortFrom(addr(r.Laddr, r.Family), r.Lport),
		Remote:       netip.AddrPortFrom(addr(r.Raddr, r.Family), r.Rport),
		Direction:    Direction(r.Direction),
		Cookie:       r.Cookie,
		TxBytes:      r.TxBytes,
		RxBytes:      r.RxBytes,
		TxPackets:    r.TxPackets,
		RxPackets:    r.RxPackets,
		Retransmits:  r.Retransmits,
		Destinations: r.Destinations,
		ClosedBy:     ClosedBy(r.ClosedBy),
		Reset:        r.Flags&uint8(portlifeEventFlagEVENT_F_RESET_SENT|portlifeEventFlagEVENT_F_RESET_RECEIVED) != 0,
		TimeWait:     r.Flags&uint8(portlifeEventFlagEVENT_F_TIME_WAIT) != 0,
		PreExisting:  r.Flags&uint8(portlifeEventFlagEVENT_F_PRE_EXISTING) != 0,
		Connected:    r.Flags&uint8(portlifeEventFlagEVENT_F_CONNECTED) != 0,
		Ephemeral:    r.Flags&uint8(portlifeEventFlagEVENT_F_EPHEMERAL) != 0,
		Errno:        unix.Errno(r.Error),
		Family:       int(r.Family),
	}
	if ev.Kind == KindConnectFailed && r.Lport == 0 && ev.Errno == 0 {
		// The port allocation failed inside connect(), which returned this;
		// the socket itself holds no error.
		ev.Errno = unix.EADDRNOTAVAIL
	}
	ev.Comm = *(*Comm)(unsafe.Pointer(&r.Comm))
	return nil
}

func (d *decoder) clock(ns uint64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return d.bootTime.Add(time.Duration(ns))
}

// addr reads the kernel's 16-byte address: IPv6, or IPv4 in the last four
// bytes (v4-mapped, or all zero for an address not yet known).
func addr(b [16]byte, family uint8) netip.Addr {
	if family == 4 {
		return netip.AddrFrom4([4]byte(b[12:]))
	}
	return netip.AddrFrom16(b)
}
