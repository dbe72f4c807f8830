// Package event is portlife's domain model: the port lifetime Event that
// every consumer of the stream reads, its enums, and the Filter that selects
// events, with the one set of rules that validates each filter value. It
// imports no eBPF: the tracer turns kernel records into Events, and
// everything downstream (encoders, sinks, accounting, metrics, the store)
// sees only this package.
package event

import (
	"bytes"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// Kind says what happened to a port. The values are the kernel's enum
// event_kind (bpf/portlife.h); a tracer test checks them against its BTF.
type Kind uint8

const (
	KindOpen          Kind = 1
	KindClose         Kind = 2
	KindConnectFailed Kind = 3
	KindBindFailed    Kind = 4
	// KindReleased: a TIME_WAIT that a close left behind is gone and its
	// port is free. User space derives it (internal/timewait); no kernel
	// record has this kind.
	KindReleased Kind = 5
	// KindPressure is made in user space (internal/ports), never by the
	// kernel: a key's port pressure crossed a threshold. It carries Pressure.
	KindPressure Kind = 6
	// KindSummary is derived in user space (internal/summary), never sent
	// by the kernel: one per (process, destination) and interval. It
	// carries its figures in Event.Summary.
	KindSummary Kind = 7
)

var kindNames = [...]string{KindOpen: "open", KindClose: "close", KindConnectFailed: "connect_failed", KindBindFailed: "bind_failed", KindReleased: "released", KindPressure: "pressure", KindSummary: "summary"}

func (k Kind) String() string { return name(kindNames[:], int(k)) }

// Kinds lists every event kind the kernel sends, in the order of the
// README. Derived kinds (released) are not in it: they follow the kinds
// they come from.
var Kinds = []Kind{KindOpen, KindClose, KindConnectFailed, KindBindFailed}

// Failed reports whether the kind is a failed call (connect_failed,
// bind_failed), which carries a reason and an errno.
func (k Kind) Failed() bool { return k == KindConnectFailed || k == KindBindFailed }

// Release says how a TIME_WAIT ended (a released event).
type Release uint8

const (
	ReleaseUnknown Release = 0
	// ReleaseExpired: its timer fired (60 s; tcp_fin_timeout while it
	// still waited for the peer's FIN).
	ReleaseExpired Release = 1
	// ReleaseReused: a new connect took the same 4-tuple before then
	// (an open, or a connect_failed after its SYN).
	ReleaseReused Release = 2
	// ReleaseKilled: it went early, with no new connection on its 4-tuple
	// (an RST or a SYN that killed it, its namespace destroyed).
	ReleaseKilled Release = 3
	// ReleaseOverflow: tcp_max_tw_buckets was full, so the kernel made no
	// TIME_WAIT and freed the port at the close.
	ReleaseOverflow Release = 4
)

var releaseNames = [...]string{ReleaseUnknown: "unknown", ReleaseExpired: "expired", ReleaseReused: "reused", ReleaseKilled: "killed", ReleaseOverflow: "overflow"}

func (r Release) String() string { return name(releaseNames[:], int(r)) }

// Proto is the transport protocol, by its IP protocol number.
type Proto uint8

const (
	ProtoTCP Proto = unix.IPPROTO_TCP
	ProtoUDP Proto = unix.IPPROTO_UDP
)

// Protos lists every protocol portlife traces.
var Protos = []Proto{ProtoTCP, ProtoUDP}

func (p Proto) String() string {
	switch p {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	}
	return "unknown"
}

// Direction says which side initiated the connection (enum direction).
type Direction uint8

const (
	DirectionUnknown  Direction = 0
	DirectionOutbound Direction = 1
	DirectionInbound  Direction = 2
)

var directionNames = [...]string{DirectionUnknown: "unknown", DirectionOutbound: "outbound", DirectionInbound: "inbound"}

func (d Direction) String() string { return name(directionNames[:], int(d)) }

// PIDSource says how the process in an event was learned (enum pid_source).
type PIDSource uint8

const (
	PIDSourceUnknown  PIDSource = 0
	PIDSourceConnect  PIDSource = 1
	PIDSourceListener PIDSource = 2
	PIDSourceClose    PIDSource = 3
	PIDSourceSocket   PIDSource = 4
	PIDSourceFDOwner  PIDSource = 5
	PIDSourceBind     PIDSource = 6
	// PIDSourceListenerFDOwner: accepted by a listener that existed before
	// tracing, whose fd owner it names.
	PIDSourceListenerFDOwner PIDSource = 8
)

var pidSourceNames = [...]string{
	PIDSourceUnknown:         "unknown",
	PIDSourceConnect:         "connect",
	PIDSourceListener:        "listener",
	PIDSourceClose:           "close",
	PIDSourceSocket:          "socket",
	PIDSourceFDOwner:         "fd_owner",
	PIDSourceBind:            "bind",
	PIDSourceListenerFDOwner: "listener_fd_owner",
}

func (s PIDSource) String() string { return name(pidSourceNames[:], int(s)) }

// ClosedBy says which side ended a connection first (enum closed_by).
type ClosedBy uint8

const (
	ClosedByUnknown ClosedBy = 0
	ClosedByLocal   ClosedBy = 1
	ClosedByRemote  ClosedBy = 2
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

// ThreadName is the name of the thread that did it, when it is known and
// differs from the process's: a runtime or library that names its threads
// (dig's isc-net-0000, a JVM's worker) shows it here, while Comm keeps the
// name a user knows the process by.
func (e *Event) ThreadName() []byte {
	t := e.Thread.Bytes()
	if len(t) == 0 || bytes.Equal(t, e.Comm.Bytes()) {
		return nil
	}
	return t
}

// Event is one port lifetime event. It is a plain value: the stream copies
// it into each consumer's queue, so it holds no pointers to shared state.
type Event struct {
	Kind        Kind
	Proto       Proto
	Family      int       // 4 or 6: the address family on the wire (v4-mapped IPv6 is 4)
	Time        time.Time // when it happened; for close, when the port was released; for released, when the TIME_WAIT left the kernel's table
	Start       time.Time // when the lifetime began; zero if before tracing; for released, the close
	Established time.Time // when the handshake completed; zero if never

	PID      uint32
	TID      uint32
	UID      uint32
	Comm     Comm // the process's name (its main thread's), as /proc/PID/comm shows it
	Thread   Comm // the name of thread TID; empty when unknown
	CgroupID uint64
	// Unit and ContainerID name the workload of the cgroup (internal/workload):
	// its systemd unit, or its container's full id. Empty when the cgroup
	// names neither, or could not be resolved.
	Unit        string
	ContainerID string
	NetNS       uint32
	PIDSource   PIDSource
	// ListenerPID is, for an accepted TCP connection, the process that
	// called listen(): the owner of its open, and kept when another process
	// that closed it becomes the owner (PIDSourceClose). 0 if unknown.
	ListenerPID uint32

	Local     netip.AddrPort
	Remote    netip.AddrPort
	Direction Direction
	Ephemeral bool // the ephemeral side's port lies in ip_local_port_range
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
	// Uncounted: the kernel has no hooks to count this socket's datagrams
	// (UDP before Linux 6.3); TxBytes, RxBytes, TxPackets and RxPackets
	// are unknown, not 0.
	Uncounted bool
	// BindBeforeConnect: a TCP socket that took its port with bind() to
	// port 0 and then connected, so its port came from the bind pool, which
	// every destination shares.
	BindBeforeConnect bool

	Errno unix.Errno // connect_failed, bind_failed: the error the call reported, 0 if none
	// InCall: a connect_failed or bind_failed seen at the call's return,
	// before the protocol sent anything (routing, policy, no port for a UDP
	// connect, every bind). The others are TCP's state machine's.
	InCall bool

	Release Release // released: how the TIME_WAIT ended
	// Pressure is set on KindPressure events alone. It is never changed once
	// published, so the copies the stream makes may share it.
	Pressure *Pressure
	// Summary holds a summary event's figures (KindSummary); nil on every
	// other kind. What it points to is never changed once published.
	Summary *Summary
}

// Duration is how long the port lived (close), or the call tried
// (connect_failed, bind_failed). It is 0 when the start was not seen.
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

// Reason says why a connect or a bind failed, in words a runbook can match
// on. Strings are constants, so this never allocates.
func (e *Event) Reason() string {
	switch e.Kind {
	case KindConnectFailed:
		switch {
		case e.Local.Port() == 0 && !e.InCall:
			// TCP's state machine saw no local port allocated: connect()
			// returned EADDRNOTAVAIL. (One that failed in the call with
			// EADDRNOTAVAIL lacked a local address, not a port.)
			return "no_ephemeral_port"
		case e.Local.Port() == 0 && e.Proto == ProtoUDP && e.Errno == unix.EAGAIN:
			// A UDP connect() that found no port to bind to.
			return "no_ephemeral_port"
		case e.Errno == unix.ECONNREFUSED:
			return "refused"
		case e.Errno == unix.ETIMEDOUT:
			return "timeout"
		case e.Errno == unix.EHOSTUNREACH, e.Errno == unix.ENETUNREACH:
			return "unreachable"
		case e.Errno == unix.EACCES, e.Errno == unix.EPERM:
			return "denied"
		case e.Errno == 0:
			return "aborted"
		}
	case KindBindFailed:
		switch {
		case e.Errno == unix.EADDRINUSE && e.Local.Port() == 0:
			// bind() to port 0 found no free port in the range.
			return "no_ephemeral_port"
		case e.Errno == unix.EADDRINUSE:
			return "address_in_use"
		case e.Errno == unix.EACCES, e.Errno == unix.EPERM:
			return "denied"
		}
	default:
		return ""
	}
	if n := unix.ErrnoName(e.Errno); n != "" {
		return n
	}
	return "error"
}
