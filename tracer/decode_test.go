package tracer

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/event"
)

// rawRecord returns r's bytes, exactly as the kernel would put the C struct
// event in the ring buffer (host order, the layout bpf2go generated).
func rawRecord(r *portlifeEvent) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(r)), unsafe.Sizeof(*r))
}

// mapped is an address as the kernel stores it: IPv6, or IPv4 as
// ::ffff:a.b.c.d (As16 of an IPv4 address is its v4-mapped form).
func mapped(s string) [16]byte { return netip.MustParseAddr(s).As16() }

func commOf(s string) (c [16]int8) {
	for i := 0; i < len(s); i++ {
		c[i] = int8(s[i])
	}
	return c
}

// bootTime is a fixed anchor, so expected times can be written out in full
// instead of being computed the way decode computes them.
var bootTime = time.Date(2024, 3, 5, 12, 0, 0, 0, time.UTC)

func testDecoder() decoder { return decoder{bootTime: bootTime} }

const (
	kOpen    = uint8(portlifeEventKindEVENT_OPEN)
	kClose   = uint8(portlifeEventKindEVENT_CLOSE)
	kFailed  = uint8(portlifeEventKindEVENT_CONNECT_FAILED)
	dOut     = uint8(portlifeDirectionDIRECTION_OUTBOUND)
	dIn      = uint8(portlifeDirectionDIRECTION_INBOUND)
	fRstSent = uint8(portlifeEventFlagEVENT_F_RESET_SENT)
	fRstRecv = uint8(portlifeEventFlagEVENT_F_RESET_RECEIVED)
	fTW      = uint8(portlifeEventFlagEVENT_F_TIME_WAIT)
	fPre     = uint8(portlifeEventFlagEVENT_F_PRE_EXISTING)
	fConn    = uint8(portlifeEventFlagEVENT_F_CONNECTED)
	fEph     = uint8(portlifeEventFlagEVENT_F_EPHEMERAL)
	fSyscall = uint8(portlifeEventFlagEVENT_F_SYSCALL)
	kBind    = uint8(portlifeEventKindEVENT_BIND_FAILED)
)

func TestDecode(t *testing.T) {
	tests := []struct {
		name string
		rec  portlifeEvent
		want event.Event
	}{
		{
			name: "tcp close over IPv4 unmaps the addresses and copies every counter",
			rec: portlifeEvent{
				Laddr: mapped("10.0.0.5"), Raddr: mapped("93.184.216.34"),
				Cookie:  0xdeadbeefcafe,
				StartNs: 1_000_000_000, EstablishedNs: 1_012_300_000, EndNs: 5_500_000_000,
				TxBytes: 1111, RxBytes: 2222, CgroupId: 3333,
				Pid: 44, Tid: 45, Uid: 46, Netns: 47,
				TxPackets: 48, RxPackets: 49, Retransmits: 50, Destinations: 51,
				Error: 0, Lport: 41234, Rport: 443,
				Kind: kClose, Proto: unix.IPPROTO_TCP, Family: 4, Direction: dOut,
				PidSource: uint8(portlifePidSourcePID_SOURCE_CONNECT),
				ClosedBy:  uint8(portlifeClosedByCLOSED_BY_LOCAL),
				Flags:     fTW | fEph, LastState: 5,
				Comm: commOf("curl"),
			},
			want: event.Event{
				Kind: event.KindClose, Proto: event.ProtoTCP,
				Time:        time.Date(2024, 3, 5, 12, 0, 5, 500_000_000, time.UTC),
				Start:       time.Date(2024, 3, 5, 12, 0, 1, 0, time.UTC),
				Established: time.Date(2024, 3, 5, 12, 0, 1, 12_300_000, time.UTC),
				PID:         44, TID: 45, UID: 46, Comm: event.Comm{'c', 'u', 'r', 'l'},
				CgroupID: 3333, NetNS: 47, PIDSource: event.PIDSourceConnect,
				Local:     netip.MustParseAddrPort("10.0.0.5:41234"),
				Remote:    netip.MustParseAddrPort("93.184.216.34:443"),
				Direction: event.DirectionOutbound, Ephemeral: true, Cookie: 0xdeadbeefcafe,
				TxBytes: 1111, RxBytes: 2222, TxPackets: 48, RxPackets: 49,
				Retransmits: 50, Destinations: 51, ClosedBy: event.ClosedByLocal,
				TimeWait: true,
			},
		},
		{
			name: "tcp open over IPv6 keeps the addresses as IPv6",
			rec: portlifeEvent{
				Laddr: mapped("2001:db8::1"), Raddr: mapped("2001:db8::2"),
				StartNs: 2_000_000_000, EstablishedNs: 2_000_000_500, EndNs: 2_000_000_500,
				Pid: 7, Lport: 443, Rport: 50000,
				Kind: kOpen, Proto: unix.IPPROTO_TCP, Family: 6, Direction: dIn,
				PidSource: uint8(portlifePidSourcePID_SOURCE_LISTENER),
				Flags:     fEph,
				Comm:      commOf("nginx"),
			},
			want: event.Event{
				Kind: event.KindOpen, Proto: event.ProtoTCP,
				Time:        time.Date(2024, 3, 5, 12, 0, 2, 500, time.UTC),
				Start:       time.Date(2024, 3, 5, 12, 0, 2, 0, time.UTC),
				Established: time.Date(2024, 3, 5, 12, 0, 2, 500, time.UTC),
				PID:         7, Comm: event.Comm{'n', 'g', 'i', 'n', 'x'}, PIDSource: event.PIDSourceListener,
				Local:     netip.MustParseAddrPort("[2001:db8::1]:443"),
				Remote:    netip.MustParseAddrPort("[2001:db8::2]:50000"),
				Direction: event.DirectionInbound, Ephemeral: true,
			},
		},
		{
			name: "pre-existing close has no start and either reset flag sets Reset",
			rec: portlifeEvent{
				Laddr: mapped("127.0.0.1"), Raddr: mapped("127.0.0.1"),
				StartNs: 0, EndNs: 9_000_000_000, Lport: 5432, Rport: 40000,
				Kind: kClose, Proto: unix.IPPROTO_TCP, Family: 4, Direction: dIn,
				ClosedBy: uint8(portlifeClosedByCLOSED_BY_REMOTE),
				Flags:    fPre | fRstRecv | fEph,
			},
			want: event.Event{
				Kind: event.KindClose, Proto: event.ProtoTCP,
				Time:      time.Date(2024, 3, 5, 12, 0, 9, 0, time.UTC),
				Local:     netip.MustParseAddrPort("127.0.0.1:5432"),
				Remote:    netip.MustParseAddrPort("127.0.0.1:40000"),
				Direction: event.DirectionInbound, Ephemeral: true,
				ClosedBy: event.ClosedByRemote, Reset: true, PreExisting: true,
			},
		},
		{
			name: "reset sent alone sets Reset but not TimeWait",
			rec: portlifeEvent{
				Laddr: mapped("10.0.0.1"), Raddr: mapped("10.0.0.2"),
				EndNs: 1, Lport: 80, Rport: 1000,
				Kind: kClose, Proto: unix.IPPROTO_TCP, Family: 4, Direction: dIn,
				Flags: fRstSent,
			},
			want: event.Event{
				Kind: event.KindClose, Proto: event.ProtoTCP,
				Time:      time.Date(2024, 3, 5, 12, 0, 0, 1, time.UTC),
				Local:     netip.MustParseAddrPort("10.0.0.1:80"),
				Remote:    netip.MustParseAddrPort("10.0.0.2:1000"),
				Direction: event.DirectionInbound, Reset: true,
			},
		},
		{
			name: "udp close carries destinations and the connected flag",
			rec: portlifeEvent{
				Laddr: mapped("::"), Raddr: mapped("2001:4860:4860::8888"),
				StartNs: 1_000, EndNs: 2_000, Lport: 50001, Rport: 53,
				TxBytes: 64, RxBytes: 512, TxPackets: 1, RxPackets: 1, Destinations: 3,
				Kind: kClose, Proto: unix.IPPROTO_UDP, Family: 6, Direction: dOut,
				PidSource: uint8(portlifePidSourcePID_SOURCE_SOCKET),
				Flags:     fConn | fEph,
				Comm:      commOf("dig"),
				Thread:    commOf("isc-net-0000"),
			},
			want: event.Event{
				Kind: event.KindClose, Proto: event.ProtoUDP,
				Time:      time.Date(2024, 3, 5, 12, 0, 0, 2_000, time.UTC),
				Start:     time.Date(2024, 3, 5, 12, 0, 0, 1_000, time.UTC),
				Comm:      event.Comm{'d', 'i', 'g'},
				Thread:    event.Comm{'i', 's', 'c', '-', 'n', 'e', 't', '-', '0', '0', '0', '0'},
				PIDSource: event.PIDSourceSocket,
				Local:     netip.MustParseAddrPort("[::]:50001"),
				Remote:    netip.MustParseAddrPort("[2001:4860:4860::8888]:53"),
				Direction: event.DirectionOutbound, Ephemeral: true,
				TxBytes: 64, RxBytes: 512, TxPackets: 1, RxPackets: 1, Destinations: 3,
				Connected: true,
			},
		},
		{
			name: "connect_failed keeps the errno and the ephemeral flag",
			rec: portlifeEvent{
				Laddr: mapped("0.0.0.0"), Raddr: mapped("192.0.2.1"),
				StartNs: 3_000_000_000, EndNs: 4_000_000_000, Lport: 0, Rport: 443,
				Error: int32(unix.ECONNREFUSED),
				Kind:  kFailed, Proto: unix.IPPROTO_TCP, Family: 4, Direction: dOut,
				Flags: fEph,
				// A full 16-byte comm has no NUL to stop at: all of it is the name.
				Comm: commOf("0123456789abcdef"),
			},
			want: event.Event{
				Kind: event.KindConnectFailed, Proto: event.ProtoTCP,
				Time:      time.Date(2024, 3, 5, 12, 0, 4, 0, time.UTC),
				Start:     time.Date(2024, 3, 5, 12, 0, 3, 0, time.UTC),
				Comm:      event.Comm{'0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'a', 'b', 'c', 'd', 'e', 'f'},
				Local:     netip.MustParseAddrPort("0.0.0.0:0"),
				Remote:    netip.MustParseAddrPort("192.0.2.1:443"),
				Direction: event.DirectionOutbound, Ephemeral: true,
				Errno: unix.ECONNREFUSED,
			},
		},
		{
			name: "a worker's close keeps the listener's pid",
			rec: portlifeEvent{
				Laddr: mapped("10.0.0.1"), Raddr: mapped("10.0.0.2"),
				StartNs: 1_000, EndNs: 2_000, Lport: 80, Rport: 40000,
				Pid: 301, Tid: 302, ListenerPid: 300,
				Kind: kClose, Proto: unix.IPPROTO_TCP, Family: 4, Direction: dIn,
				PidSource: uint8(portlifePidSourcePID_SOURCE_CLOSE),
				Comm:      commOf("nginx"),
			},
			want: event.Event{
				Kind: event.KindClose, Proto: event.ProtoTCP,
				Time:  time.Date(2024, 3, 5, 12, 0, 0, 2_000, time.UTC),
				Start: time.Date(2024, 3, 5, 12, 0, 0, 1_000, time.UTC),
				PID:   301, TID: 302, ListenerPID: 300, PIDSource: event.PIDSourceClose,
				Comm:      event.Comm{'n', 'g', 'i', 'n', 'x'},
				Local:     netip.MustParseAddrPort("10.0.0.1:80"),
				Remote:    netip.MustParseAddrPort("10.0.0.2:40000"),
				Direction: event.DirectionInbound,
			},
		},
		{
			name: "a connect that failed in the call keeps its errno though it has no port",
			rec: portlifeEvent{
				Laddr: mapped("::"), Raddr: mapped("2001:db8::1"),
				StartNs: 1_000, EndNs: 2_000, Lport: 0, Rport: 80,
				Error: int32(unix.EADDRNOTAVAIL),
				Kind:  kFailed, Proto: unix.IPPROTO_TCP, Family: 6, Direction: dOut,
				PidSource: uint8(portlifePidSourcePID_SOURCE_CONNECT),
				Flags:     fSyscall | fEph,
			},
			want: event.Event{
				Kind: event.KindConnectFailed, Proto: event.ProtoTCP,
				Time:      time.Date(2024, 3, 5, 12, 0, 0, 2_000, time.UTC),
				Start:     time.Date(2024, 3, 5, 12, 0, 0, 1_000, time.UTC),
				PIDSource: event.PIDSourceConnect,
				Local:     netip.MustParseAddrPort("[::]:0"),
				Remote:    netip.MustParseAddrPort("[2001:db8::1]:80"),
				Direction: event.DirectionOutbound, Ephemeral: true,
				Errno: unix.EADDRNOTAVAIL, InCall: true,
			},
		},
		{
			name: "the state machine's connect with no port gets EADDRNOTAVAIL",
			rec: portlifeEvent{
				Laddr: mapped("127.0.0.1"), Raddr: mapped("127.0.0.1"),
				EndNs: 1, Lport: 0, Rport: 5000,
				Kind: kFailed, Proto: unix.IPPROTO_TCP, Family: 4, Direction: dOut,
				Flags: fEph,
			},
			want: event.Event{
				Kind: event.KindConnectFailed, Proto: event.ProtoTCP,
				Time:      time.Date(2024, 3, 5, 12, 0, 0, 1, time.UTC),
				Local:     netip.MustParseAddrPort("127.0.0.1:0"),
				Remote:    netip.MustParseAddrPort("127.0.0.1:5000"),
				Direction: event.DirectionOutbound, Ephemeral: true,
				Errno: unix.EADDRNOTAVAIL,
			},
		},
		{
			name: "bind_failed",
			rec: portlifeEvent{
				Laddr: mapped("0.0.0.0"), Raddr: mapped("0.0.0.0"),
				StartNs: 5, EndNs: 9, Lport: 0, Rport: 0,
				Error: int32(unix.EADDRINUSE),
				Kind:  kBind, Proto: unix.IPPROTO_UDP, Family: 4, Direction: dOut,
				PidSource: uint8(portlifePidSourcePID_SOURCE_BIND),
				Flags:     fSyscall | fEph,
			},
			want: event.Event{
				Kind: event.KindBindFailed, Proto: event.ProtoUDP,
				Time:      time.Date(2024, 3, 5, 12, 0, 0, 9, time.UTC),
				Start:     time.Date(2024, 3, 5, 12, 0, 0, 5, time.UTC),
				PIDSource: event.PIDSourceBind,
				Local:     netip.MustParseAddrPort("0.0.0.0:0"),
				Remote:    netip.MustParseAddrPort("0.0.0.0:0"),
				Direction: event.DirectionOutbound, Ephemeral: true,
				Errno: unix.EADDRINUSE, InCall: true,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := testDecoder()
			// Start from a dirty Event: decode must overwrite every field,
			// because the Tracer reuses one event.Event for all records.
			got := event.Event{Reset: true, TimeWait: true, PreExisting: true, Connected: true, Ephemeral: true, InCall: true,
				ListenerPID: 9, Start: time.Now(), Established: time.Now(), Errno: unix.EIO, Comm: event.Comm{'x', 'x', 'x', 'x', 'x', 'x', 'x', 'x'}}
			if err := d.decode(rawRecord(&tt.rec), &got); err != nil {
				t.Fatalf("decode: %v", err)
			}
			for _, tm := range []struct {
				name      string
				got, want time.Time
			}{{"Time", got.Time, tt.want.Time}, {"Start", got.Start, tt.want.Start}, {"Established", got.Established, tt.want.Established}} {
				if !tm.got.Equal(tm.want) || tm.got.IsZero() != tm.want.IsZero() {
					t.Errorf("%s = %v, want %v", tm.name, tm.got, tm.want)
				}
			}
			// The times and the family are checked; compare everything else.
			got.Time, got.Start, got.Established = tt.want.Time, tt.want.Start, tt.want.Established
			if got.Family != int(tt.rec.Family) {
				t.Errorf("Family = %d, want %d", got.Family, tt.rec.Family)
			}
			got.Family = tt.want.Family
			if got != tt.want {
				t.Errorf("decoded event differs:\n got  %+v\n want %+v", got, tt.want)
			}
			// Family 4 records must come out as plain IPv4, not ::ffff:a.b.c.d,
			// or text output and --raddr comparisons in Go would show v6.
			if tt.rec.Family == 4 && (got.Local.Addr().Is4In6() || got.Remote.Addr().Is4In6()) {
				t.Errorf("family 4 addresses left v4-mapped: %v %v", got.Local, got.Remote)
			}
		})
	}
}

func TestDecodeCommTrimming(t *testing.T) {
	tests := []struct {
		name string
		comm [16]int8
		want string
	}{
		{"NUL padding is cut", commOf("sshd"), "sshd"},
		{"the kernel's 15 bytes plus NUL", commOf("systemd-resolve"), "systemd-resolve"},
		{"an empty comm stays empty", [16]int8{}, ""},
		{"bytes after the first NUL are not part of the name", [16]int8{'a', 'b', 0, 'z', 'z'}, "ab"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := testDecoder()
			rec := portlifeEvent{Kind: kClose, Family: 4, Comm: tt.comm}
			var ev event.Event
			if err := d.decode(rawRecord(&rec), &ev); err != nil {
				t.Fatal(err)
			}
			if got := string(ev.Comm.Bytes()); got != tt.want {
				t.Errorf("Comm.Bytes() = %q, want %q", got, tt.want)
			}
			if got := ev.Comm.String(); got != tt.want {
				t.Errorf("Comm.String() = %q, want %q", got, tt.want)
			}
		})
	}
}

// The kernel judges the ephemeral side against the socket's own namespace's
// range; Ephemeral is its flag, whatever the ports look like to user space.
func TestDecodeEphemeral(t *testing.T) {
	tests := []struct {
		name         string
		direction    uint8
		lport, rport uint16
		flags        uint8
		want         bool
	}{
		{"flag set", dOut, 40000, 443, fEph, true},
		{"flag clear, though the port is in the host's default range", dOut, 40000, 443, 0, false},
		{"flag set on a port outside the host's default range", dOut, 10000, 443, fEph, true},
		{"flag set on an inbound connection", dIn, 443, 40000, fEph, true},
		{"flag set among the others", dOut, 40000, 443, fTW | fEph | fConn, true},
		{"other flags alone", dOut, 40000, 443, fTW | fPre | fConn | fRstSent | fRstRecv, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := testDecoder()
			rec := portlifeEvent{Kind: kClose, Family: 4, Direction: tt.direction, Lport: tt.lport, Rport: tt.rport, Flags: tt.flags}
			var ev event.Event
			if err := d.decode(rawRecord(&rec), &ev); err != nil {
				t.Fatal(err)
			}
			if ev.Ephemeral != tt.want {
				t.Errorf("Ephemeral = %v, want %v (flags %#x)", ev.Ephemeral, tt.want, tt.flags)
			}
		})
	}
}

func TestDecodeDurations(t *testing.T) {
	tests := []struct {
		name                           string
		direction                      uint8
		startNs, establishedNs, endNs  uint64
		wantDuration, wantConnectDelay time.Duration
	}{
		{"outbound: lifetime and connect latency", dOut, 1_000_000_000, 1_012_300_000, 5_000_000_000, 4 * time.Second, 12300 * time.Microsecond},
		{"inbound has no connect latency of its own", dIn, 1_000_000_000, 1_012_300_000, 5_000_000_000, 4 * time.Second, 0},
		{"never established: no connect latency", dOut, 1_000_000_000, 0, 1_500_000_000, 500 * time.Millisecond, 0},
		{"start unseen: neither is known", dOut, 0, 1_012_300_000, 5_000_000_000, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := testDecoder()
			rec := portlifeEvent{Kind: kClose, Family: 4, Direction: tt.direction,
				StartNs: tt.startNs, EstablishedNs: tt.establishedNs, EndNs: tt.endNs}
			var ev event.Event
			if err := d.decode(rawRecord(&rec), &ev); err != nil {
				t.Fatal(err)
			}
			if got := ev.Duration(); got != tt.wantDuration {
				t.Errorf("Duration() = %v, want %v", got, tt.wantDuration)
			}
			if got := ev.ConnectLatency(); got != tt.wantConnectDelay {
				t.Errorf("ConnectLatency() = %v, want %v", got, tt.wantConnectDelay)
			}
		})
	}
}

// A truncated record must be refused, not read past its end.
func TestDecodeShortRecord(t *testing.T) {
	full := rawRecord(&portlifeEvent{Kind: kClose, Family: 4})
	for _, n := range []int{0, 1, recordSize - 1} {
		t.Run(fmt.Sprintf("%d bytes", n), func(t *testing.T) {
			d := testDecoder()
			var ev event.Event
			if err := d.decode(full[:n], &ev); err == nil {
				t.Errorf("decode of a %d-byte record succeeded, want an error", n)
			}
		})
	}
	t.Run("nil", func(t *testing.T) {
		d := testDecoder()
		var ev event.Event
		if err := d.decode(nil, &ev); err == nil {
			t.Error("decode(nil) succeeded, want an error")
		}
	})
}

// newDecoder anchors CLOCK_BOOTTIME to the wall clock: a kernel timestamp
// taken now must decode to about now, not to boot time or the future.
func TestNewDecoderAnchorsBootClock(t *testing.T) {
	d, err := newDecoder()
	if err != nil {
		t.Fatal(err)
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		t.Fatal(err)
	}
	got := d.clock(uint64(ts.Nano()))
	if off := time.Since(got); off < -time.Second || off > time.Second {
		t.Errorf("a CLOCK_BOOTTIME timestamp taken now decodes to %v, %v from now", got, off)
	}
	if !d.clock(0).IsZero() {
		t.Errorf("clock(0) = %v, want the zero time (not seen)", d.clock(0))
	}
}

// The thread is named only where it tells something: it is known, and its
// name differs from the process's.
func TestDecodeThreadName(t *testing.T) {
	tests := []struct {
		name         string
		comm, thread [16]int8
		want         string
	}{
		{"a thread named apart", commOf("dig"), commOf("isc-net-0000"), "isc-net-0000"},
		{"the process's own name", commOf("curl"), commOf("curl"), ""},
		{"not seen (a socket from before start)", commOf("nginx"), [16]int8{}, ""},
		{"equal up to the NUL, whatever follows it", [16]int8{'a', 'b', 0, 'x'}, [16]int8{'a', 'b', 0, 'y'}, ""},
		{"a prefix of the process's name is another name", commOf("postgres"), commOf("post"), "post"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := testDecoder()
			rec := portlifeEvent{Kind: kOpen, Family: 4, Comm: tt.comm, Thread: tt.thread}
			var ev event.Event
			if err := d.decode(rawRecord(&rec), &ev); err != nil {
				t.Fatal(err)
			}
			if got := string(ev.ThreadName()); got != tt.want {
				t.Errorf("ThreadName() = %q, want %q", got, tt.want)
			}
		})
	}
}

// The C struct event (bpf/portlife.h) is 176 bytes with no implicit padding;
// if the generated Go type drifts, decode's cast reads garbage.
func TestEventSize(t *testing.T) {
	if got := unsafe.Sizeof(portlifeEvent{}); got != 176 {
		t.Errorf("unsafe.Sizeof(portlifeEvent{}) = %d, want 176 as in bpf/portlife.h", got)
	}
	if recordSize != 176 {
		t.Errorf("recordSize = %d, want 176", recordSize)
	}
	var e portlifeEvent
	for _, f := range []struct {
		name      string
		got, want uintptr
	}{
		{"cookie", unsafe.Offsetof(e.Cookie), 32},
		{"pid", unsafe.Offsetof(e.Pid), 88},
		{"error", unsafe.Offsetof(e.Error), 120},
		{"listener_pid", unsafe.Offsetof(e.ListenerPid), 124},
		{"lport", unsafe.Offsetof(e.Lport), 132},
		{"kind", unsafe.Offsetof(e.Kind), 136},
		{"comm", unsafe.Offsetof(e.Comm), 144},
		{"thread", unsafe.Offsetof(e.Thread), 160},
	} {
		if f.got != f.want {
			t.Errorf("offset of %s = %d, want %d", f.name, f.got, f.want)
		}
	}
}

// The embedded ELF's BTF is what the kernel side was compiled with; the Go
// type must still match it (a stale bpf2go run would not).
func TestEventSizeMatchesBTF(t *testing.T) {
	spec, err := loadPortlife()
	if err != nil {
		t.Fatal(err)
	}
	var s *btf.Struct
	if err := spec.Types.TypeByName("event", &s); err != nil {
		t.Fatalf("struct event in the ELF's BTF: %v", err)
	}
	if int(s.Size) != recordSize {
		t.Errorf("BTF struct event is %d bytes, Go portlifeEvent is %d", s.Size, recordSize)
	}
	var c *btf.Struct
	if err := spec.Types.TypeByName("config", &c); err != nil {
		t.Fatalf("struct config in the ELF's BTF: %v", err)
	}
	if got := unsafe.Sizeof(portlifeConfig{}); uintptr(c.Size) != got {
		t.Errorf("BTF struct config is %d bytes, Go portlifeConfig is %d", c.Size, got)
	}
}

// The filter limits of internal/event must be the kernel's table sizes, or
// a filter Validate accepts fails at load time (or one the kernel could hold
// is refused).
func TestFilterLimitsMatchKernel(t *testing.T) {
	spec, err := loadPortlife()
	if err != nil {
		t.Fatal(err)
	}
	m, ok := spec.Maps[portlifeMapRaddrNets]
	if !ok {
		t.Fatalf("no %s map in the spec", portlifeMapRaddrNets)
	}
	if int(m.MaxEntries) != event.MaxRemoteNets {
		t.Errorf("raddr_nets holds %d entries, event.MaxRemoteNets is %d", m.MaxEntries, event.MaxRemoteNets)
	}
	var c portlifeConfig
	if len(c.Lports) != event.MaxPortRanges || len(c.Rports) != event.MaxPortRanges {
		t.Errorf("struct config holds %d/%d port ranges, event.MaxPortRanges is %d", len(c.Lports), len(c.Rports), event.MaxPortRanges)
	}
	if len(c.Comm)-1 != event.MaxCommLen {
		t.Errorf("struct config's comm holds %d bytes and a NUL, event.MaxCommLen is %d", len(c.Comm)-1, event.MaxCommLen)
	}
}

// sampleRecord decodes to a well-formed TCP close, or the benchmarks measure
// an unrealistic path.
func TestSampleRecordDecodes(t *testing.T) {
	d := testDecoder()
	var ev event.Event
	if err := d.decode(sampleRecord(), &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Kind != event.KindClose || ev.Proto != event.ProtoTCP || ev.Comm.String() != "curl" ||
		ev.Local != netip.MustParseAddrPort("10.0.0.5:41234") ||
		ev.Remote != netip.MustParseAddrPort("93.184.216.34:443") ||
		!ev.Ephemeral || !ev.TimeWait || ev.ClosedBy != event.ClosedByLocal || ev.Duration() != 4500*time.Millisecond {
		t.Errorf("sampleRecord decodes to %+v, want curl's TCP close 10.0.0.5:41234 -> 93.184.216.34:443 of 4.5s", ev)
	}
}
