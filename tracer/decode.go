package tracer

import (
	"fmt"
	"net/netip"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/event"
)

// decoder turns kernel records into Events. The kernel's clock is
// CLOCK_BOOTTIME; bootTime anchors it to the wall clock, and anchor moves
// it when the wall clock is stepped (NTP, a suspended VM), so that events
// of a week-long run still carry the right time.
type decoder struct {
	bootTime time.Time
	// udpUncounted: this kernel has no hooks to count UDP datagrams.
	udpUncounted bool
}

func newDecoder() (decoder, error) {
	var d decoder
	return d, d.anchor()
}

// anchor reads both clocks and sets bootTime from them. It costs two vDSO
// clock reads.
func (d *decoder) anchor() error {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return fmt.Errorf("reading CLOCK_BOOTTIME: %w", err)
	}
	d.bootTime = time.Now().Add(-time.Duration(ts.Nano()))
	return nil
}

const recordSize = int(unsafe.Sizeof(portlifeEvent{}))

// decode fills ev from raw. The record is the C struct event, which bpf2go
// generated portlifeEvent from, in host byte order: a cast reads it without
// reflection or copies. The enums' values are the kernel's (enums_test.go).
func (d *decoder) decode(raw []byte, ev *event.Event) error {
	if len(raw) < recordSize {
		return fmt.Errorf("short event record: %d bytes, want %d", len(raw), recordSize)
	}
	r := (*portlifeEvent)(unsafe.Pointer(&raw[0]))

	*ev = event.Event{
		Kind:              event.Kind(r.Kind),
		Proto:             event.Proto(r.Proto),
		Time:              d.clock(r.EndNs),
		Start:             d.clock(r.StartNs),
		Established:       d.clock(r.EstablishedNs),
		PID:               r.Pid,
		TID:               r.Tid,
		UID:               r.Uid,
		CgroupID:          r.CgroupId,
		NetNS:             r.Netns,
		PIDSource:         event.PIDSource(r.PidSource),
		ListenerPID:       r.ListenerPid,
		Local:             netip.AddrPortFrom(addr(r.Laddr, r.Family), r.Lport),
		Remote:            netip.AddrPortFrom(addr(r.Raddr, r.Family), r.Rport),
		Direction:         event.Direction(r.Direction),
		Cookie:            r.Cookie,
		TxBytes:           r.TxBytes,
		RxBytes:           r.RxBytes,
		TxPackets:         r.TxPackets,
		RxPackets:         r.RxPackets,
		Retransmits:       r.Retransmits,
		Destinations:      r.Destinations,
		ClosedBy:          event.ClosedBy(r.ClosedBy),
		Reset:             r.Flags&uint8(portlifeEventFlagEVENT_F_RESET_SENT|portlifeEventFlagEVENT_F_RESET_RECEIVED) != 0,
		TimeWait:          r.Flags&uint8(portlifeEventFlagEVENT_F_TIME_WAIT) != 0,
		PreExisting:       r.Flags&uint8(portlifeEventFlagEVENT_F_PRE_EXISTING) != 0,
		Connected:         r.Flags&uint8(portlifeEventFlagEVENT_F_CONNECTED) != 0,
		Ephemeral:         r.Flags&uint8(portlifeEventFlagEVENT_F_EPHEMERAL) != 0,
		Errno:             unix.Errno(r.Error),
		InCall:            r.Flags&uint8(portlifeEventFlagEVENT_F_SYSCALL) != 0,
		BindBeforeConnect: r.Flags&uint8(portlifeEventFlagEVENT_F_BIND_BEFORE_CONNECT) != 0,
		Family:            int(r.Family),
	}
	if ev.Kind == event.KindConnectFailed && r.Lport == 0 && ev.Errno == 0 && !ev.InCall {
		// The port allocation failed inside connect(), which returned this;
		// the socket itself holds no error.
		ev.Errno = unix.EADDRNOTAVAIL
	}
	// Without per-datagram hooks a UDP socket's counts are not known: 0
	// would be a claim.
	ev.Uncounted = ev.Proto == event.ProtoUDP && d.udpUncounted
	ev.Comm = *(*event.Comm)(unsafe.Pointer(&r.Comm))
	ev.Thread = *(*event.Comm)(unsafe.Pointer(&r.Thread))
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
