package tracer

import (
	"net/netip"
	"unsafe"
)

// Decoder decodes raw ring-buffer records; exported for benchmarks and tools
// that replay captured records. The Tracer uses the same code internally.
type Decoder struct{ d decoder }

// NewDecoder anchors the kernel's CLOCK_BOOTTIME to the wall clock now.
func NewDecoder() (*Decoder, error) {
	d, err := newDecoder()
	if err != nil {
		return nil, err
	}
	return &Decoder{d: d}, nil
}

// Decode fills ev from one raw record, as read from the ring buffer. It does
// not allocate.
func (d *Decoder) Decode(raw []byte, ev *Event) error { return d.d.decode(raw, ev) }

// SampleRecord returns a realistic raw record of a TCP close: curl's
// outbound connection from 10.0.0.5:41234 to 93.184.216.34:443, closed on
// this side first, so the local port was left in TIME_WAIT. It exists for benchmarks and
// tests outside this package, which cannot build records themselves.
func SampleRecord() []byte {
	r := portlifeEvent{
		Laddr:         netip.MustParseAddr("::ffff:10.0.0.5").As16(),
		Raddr:         netip.MustParseAddr("::ffff:93.184.216.34").As16(),
		Cookie:        0x1234_5678,
		StartNs:       1_000_000_000_000,
		EstablishedNs: 1_000_012_300_000,
		EndNs:         1_004_500_000_000,
		TxBytes:       4 << 10,
		RxBytes:       12 << 20,
		CgroupId:      4321,
		Pid:           4242,
		Tid:           4242,
		Uid:           1000,
		Netns:         4026531840,
		TxPackets:     40,
		RxPackets:     9000,
		Retransmits:   1,
		Lport:         41234,
		Rport:         443,
		Kind:          uint8(portlifeEventKindEVENT_CLOSE),
		Proto:         uint8(ProtoTCP),
		Family:        4,
		Direction:     uint8(portlifeDirectionDIRECTION_OUTBOUND),
		PidSource:     uint8(portlifePidSourcePID_SOURCE_CONNECT),
		ClosedBy:      uint8(portlifeClosedByCLOSED_BY_LOCAL),
		Flags:         uint8(portlifeEventFlagEVENT_F_TIME_WAIT | portlifeEventFlagEVENT_F_EPHEMERAL),
		LastState:     5, // TCP_FIN_WAIT2: the active closer's last state before TIME_WAIT
	}
	for i, c := range []byte("curl") {
		r.Comm[i] = int8(c)
	}
	raw := make([]byte, recordSize)
	copy(raw, unsafe.Slice((*byte)(unsafe.Pointer(&r)), recordSize))
	return raw
}
