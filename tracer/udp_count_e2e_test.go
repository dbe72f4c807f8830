package tracer

import (
	"encoding/binary"
	"fmt"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/event"
)

// A socket that sends to many destinations, each of them several times in
// turn, reports how many distinct ones it sent to: exactly up to 64, and 64
// beyond, as the README says. Revisiting a destination never counts it again.
func TestUDPDestinations(t *testing.T) {
	r := startTracer(t, event.Filter{Protos: []event.Proto{event.ProtoUDP}})
	msg := []byte("ping")
	for _, fam := range udpFamilies {
		for _, tt := range []struct {
			distinct int
			want     uint32
		}{
			{1, 1}, {2, 2}, {10, 10}, {40, 40}, {64, 64}, {65, 64}, {100, 64},
		} {
			t.Run(fmt.Sprintf("%s/%d destinations", fam.name, tt.distinct), func(t *testing.T) {
				ports := make([]uint16, tt.distinct)
				for i := range ports {
					fd := fam.socket(t)
					defer unix.Close(fd)
					if err := unix.Bind(fd, fam.sockaddr(0)); err != nil {
						t.Fatal(err)
					}
					ports[i] = localPort(t, fd)
				}
				client := fam.socket(t)
				const rounds = 3
				for range rounds {
					for _, p := range ports {
						if err := unix.Sendto(client, msg, 0, fam.sockaddr(p)); err != nil {
							t.Fatal(err)
						}
					}
				}
				id := cookie(t, client)
				unix.Close(client)

				ev := r.events.waitFor(t, 2, ofSocket(id))
				if got := kinds(ev); len(got) != 2 || got[1] != "close" {
					t.Fatalf("events %v, want [open close]", got)
				}
				e := ev[1]
				check(t, "close", "destinations", e.Destinations, tt.want)
				if r.requireCounted(t, &e) {
					check(t, "close", "tx packets", e.TxPackets, uint32(rounds*tt.distinct))
				}
				check(t, "close", "remote port (the first destination)", e.Remote.Port(), ports[0])
			})
		}
	}
	r.requireNothingLost(t)
}

// UDP generic segmentation offload: one send of a large buffer leaves as
// one datagram per segment, which the receiver reads one by one. The
// sender counts the segments of a socket-wide UDP_SEGMENT; a per-send
// UDP_SEGMENT control message is not visible to its hooks and counts as one
// datagram, as the README says.
func TestUDPGSOSegments(t *testing.T) {
	r := startTracer(t, event.Filter{Protos: []event.Proto{event.ProtoUDP}})
	tests := []struct {
		name     string
		gso      uint16
		perSend  bool // a UDP_SEGMENT control message instead of the socket option
		size     int
		segments uint32 // datagrams on the wire, as the receiver reads them
		wantTx   uint32
	}{
		{"no GSO", 0, false, 1000, 1, 1},
		{"UDP_SEGMENT 100, 1000 bytes", 100, false, 1000, 10, 10},
		{"UDP_SEGMENT 100, 1050 bytes: a short last segment", 100, false, 1050, 11, 11},
		{"UDP_SEGMENT 100, 80 bytes: one datagram", 100, false, 80, 1, 1},
		{"UDP_SEGMENT 100 per send: one send, counted once", 100, true, 1000, 10, 1},
	}
	for _, fam := range udpFamilies {
		for _, tt := range tests {
			t.Run(fam.name+"/"+tt.name, func(t *testing.T) {
				receiver := fam.socket(t)
				defer unix.Close(receiver)
				if err := unix.Bind(receiver, fam.sockaddr(0)); err != nil {
					t.Fatal(err)
				}
				if err := unix.SetsockoptTimeval(receiver, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5}); err != nil {
					t.Fatal(err)
				}
				rport := localPort(t, receiver)
				sender := fam.socket(t)
				defer unix.Close(sender)
				if err := unix.Connect(sender, fam.sockaddr(rport)); err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, tt.size)
				switch {
				case tt.perSend:
					if _, err := unix.SendmsgN(sender, buf, udpSegmentCmsg(tt.gso), nil, 0); err != nil {
						t.Fatalf("sendmsg with UDP_SEGMENT: %v", err)
					}
				default:
					if tt.gso > 0 {
						if err := unix.SetsockoptInt(sender, unix.SOL_UDP, unix.UDP_SEGMENT, int(tt.gso)); err != nil {
							t.Fatalf("UDP_SEGMENT: %v", err)
						}
					}
					if err := unix.Send(sender, buf, 0); err != nil {
						t.Fatal(err)
					}
				}
				var datagrams uint32
				rbuf := make([]byte, 65536)
				for got := 0; got < tt.size; datagrams++ {
					n, _, err := unix.Recvfrom(receiver, rbuf, 0)
					if err != nil {
						t.Fatalf("receiving after %d of %d bytes: %v", got, tt.size, err)
					}
					got += n
				}
				if datagrams != tt.segments {
					t.Fatalf("the receiver read %d datagrams, want %d", datagrams, tt.segments)
				}
				sid, rid := cookie(t, sender), cookie(t, receiver)
				unix.Close(sender)
				unix.Close(receiver)

				isClose := func(id uint64) func(*event.Event) bool {
					return func(e *event.Event) bool { return e.Kind == event.KindClose && ofSocket(id)(e) }
				}
				s := r.events.waitFor(t, 1, isClose(sid))[0]
				if r.requireCounted(t, &s) {
					check(t, "sender close", "tx packets", s.TxPackets, tt.wantTx)
					check(t, "sender close", "tx bytes", s.TxBytes, uint64(tt.size))
				}
				rcv := r.events.waitFor(t, 1, isClose(rid))[0]
				if r.requireCounted(t, &rcv) {
					check(t, "receiver close", "rx packets", rcv.RxPackets, datagrams)
					check(t, "receiver close", "rx bytes", rcv.RxBytes, uint64(tt.size))
				}
			})
		}
	}
	r.requireNothingLost(t)
}

// udpSegmentCmsg is a UDP_SEGMENT control message: segments of gso bytes
// for this one send.
func udpSegmentCmsg(gso uint16) []byte {
	oob := make([]byte, unix.CmsgSpace(2))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(oob[unix.CmsgLen(0):], gso)
	return oob
}
