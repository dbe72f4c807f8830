package tracer

import (
	"io"
	"net/netip"
	"testing"
	"unsafe"

	"github.com/portlife/portlife/internal/encode"
	"github.com/portlife/portlife/internal/event"
	"github.com/portlife/portlife/internal/sink"
	"github.com/portlife/portlife/internal/stream"
)

// BenchmarkDecode is the cost of turning one ring-buffer record into the
// event.Event the Tracer reuses.
func BenchmarkDecode(b *testing.B) {
	d := testDecoder()
	raw := sampleRecord()
	var ev event.Event
	b.ReportAllocs()
	for b.Loop() {
		if err := d.decode(raw, &ev); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRecordToJSON is the reader thread's whole path after the ring
// buffer read, as `portlife trace --output json` runs it: decode into a
// reused Event, then the stream, whose primary output encodes JSON into a
// buffered writer.
func BenchmarkRecordToJSON(b *testing.B) {
	for _, subscribers := range []int{0, 1} {
		b.Run([]string{"stdout only", "stdout and a queued consumer"}[subscribers], func(b *testing.B) {
			d := testDecoder()
			raw := sampleRecord()
			s := stream.New(sink.NewWriter(io.Discard, &encode.JSON{}, 256<<10))
			for i := 0; i < subscribers; i++ {
				s.Subscribe("json", sink.NewWriter(io.Discard, &encode.JSON{}, 256<<10), 4096)
			}
			var ev event.Event
			b.ReportAllocs()
			for b.Loop() {
				if err := d.decode(raw, &ev); err != nil {
					b.Fatal(err)
				}
				if err := s.Write(&ev); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			if err := s.Close(); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// sampleRecord returns a realistic raw record of a TCP close: curl's
// outbound connection from 10.0.0.5:41234 to 93.184.216.34:443, closed on
// this side first, so the local port was left in TIME_WAIT.

func sampleRecord() []byte {
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
		Proto:         uint8(event.ProtoTCP),
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
