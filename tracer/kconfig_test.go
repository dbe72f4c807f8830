package tracer

import (
	"net/netip"
	"testing"
	"time"

	"github.com/portlife/portlife/internal/event"
)

func TestKernelConfig(t *testing.T) {
	const (
		bitOpen    = 1 << 1 // 1 << EVENT_OPEN
		bitClose   = 1 << 2 // 1 << EVENT_CLOSE
		bitFailed  = 1 << 3 // 1 << EVENT_CONNECT_FAILED
		bitBind    = 1 << 4 // 1 << EVENT_BIND_FAILED
		bothProtos = uint8(portlifeTracedProtoTRACED_TCP | portlifeTracedProtoTRACED_UDP)
	)

	t.Run("zero filter sends every kind and matches everything", func(t *testing.T) {
		var f event.Filter
		var want portlifeConfig
		want.WakeupBytes = 4096
		want.Events = bitOpen | bitClose | bitFailed | bitBind
		want.Protos = bothProtos
		if got := kernelConfig(&f, 4096); got != want {
			t.Errorf("kernelConfig:\n got  %+v\n want %+v", got, want)
		}
	})

	t.Run("every filter field lands in its config field", func(t *testing.T) {
		f := event.Filter{
			PID:           4242,
			Comm:          "nginx",
			Protos:        []event.Proto{event.ProtoTCP}, // by attaching, and for the syscall hooks that see both
			Family:        6,
			Direction:     event.DirectionInbound,
			LocalPorts:    []event.PortRange{{Lo: 443, Hi: 443}, {Lo: 8000, Hi: 8999}},
			RemotePorts:   []event.PortRange{{Lo: 53, Hi: 53}},
			RemoteNets:    []netip.Prefix{netip.MustParsePrefix("fd00::/8")},
			EphemeralOnly: true,
			MinDuration:   10 * time.Millisecond,
			Kinds:         []event.Kind{event.KindClose, event.KindConnectFailed},
		}
		var want portlifeConfig
		want.MinDurationNs = 10_000_000
		want.WakeupBytes = 1 << 20
		want.Pid = 4242
		want.Events = bitClose | bitFailed
		want.Lports[0].Lo, want.Lports[0].Hi = 443, 443
		want.Lports[1].Lo, want.Lports[1].Hi = 8000, 8999
		want.N_lports = 2
		want.Rports[0].Lo, want.Rports[0].Hi = 53, 53
		want.N_rports = 1
		want.Protos = uint8(portlifeTracedProtoTRACED_TCP)
		want.Family = 6
		want.Direction = uint8(portlifeDirectionDIRECTION_INBOUND)
		want.EphemeralOnly = 1
		want.MatchRaddr = 1
		want.MatchComm = 1
		want.Comm = [16]int8{'n', 'g', 'i', 'n', 'x'}
		if got := kernelConfig(&f, 1<<20); got != want {
			t.Errorf("kernelConfig:\n got  %+v\n want %+v", got, want)
		}
	})

	t.Run("one kind sets one bit", func(t *testing.T) {
		for _, tt := range []struct {
			k    event.Kind
			want uint32
		}{{event.KindOpen, bitOpen}, {event.KindClose, bitClose}, {event.KindConnectFailed, bitFailed}, {event.KindBindFailed, bitBind}} {
			f := event.Filter{Kinds: []event.Kind{tt.k}}
			if got := kernelConfig(&f, 0).Events; got != tt.want {
				t.Errorf("Kinds [%v]: events = %#x, want %#x", tt.k, got, tt.want)
			}
		}
	})

	t.Run("a full comm fills 15 bytes and keeps the NUL", func(t *testing.T) {
		f := event.Filter{Comm: "systemd-resolve"}
		c := kernelConfig(&f, 0)
		if c.MatchComm != 1 {
			t.Errorf("MatchComm = %d, want 1", c.MatchComm)
		}
		for i := 0; i < 15; i++ {
			if c.Comm[i] != int8(f.Comm[i]) {
				t.Fatalf("Comm[%d] = %d, want %d (%q)", i, c.Comm[i], f.Comm[i], f.Comm[i])
			}
		}
		if c.Comm[15] != 0 {
			t.Errorf("Comm[15] = %d, want the terminating NUL", c.Comm[15])
		}
	})

	t.Run("the maximum number of port ranges fits", func(t *testing.T) {
		f := event.Filter{LocalPorts: ranges(event.MaxPortRanges), RemotePorts: ranges(event.MaxPortRanges)}
		c := kernelConfig(&f, 0)
		if int(c.N_lports) != event.MaxPortRanges || int(c.N_rports) != event.MaxPortRanges {
			t.Errorf("N_lports, N_rports = %d, %d, want %d", c.N_lports, c.N_rports, event.MaxPortRanges)
		}
		last := ranges(event.MaxPortRanges)[event.MaxPortRanges-1]
		if c.Lports[event.MaxPortRanges-1].Lo != last.Lo || c.Rports[event.MaxPortRanges-1].Hi != last.Hi {
			t.Errorf("last ranges = %+v %+v, want %v", c.Lports[event.MaxPortRanges-1], c.Rports[event.MaxPortRanges-1], last)
		}
	})

	t.Run("each protocol sets its bit", func(t *testing.T) {
		for _, tt := range []struct {
			p    event.Proto
			want uint8
		}{{event.ProtoTCP, uint8(portlifeTracedProtoTRACED_TCP)}, {event.ProtoUDP, uint8(portlifeTracedProtoTRACED_UDP)}} {
			f := event.Filter{Protos: []event.Proto{tt.p}}
			if got := kernelConfig(&f, 0).Protos; got != tt.want {
				t.Errorf("Protos [%v]: protos = %#x, want %#x", tt.p, got, tt.want)
			}
		}
	})

	t.Run("outbound direction", func(t *testing.T) {
		f := event.Filter{Direction: event.DirectionOutbound, Family: 4}
		c := kernelConfig(&f, 0)
		if c.Direction != uint8(portlifeDirectionDIRECTION_OUTBOUND) || c.Family != 4 {
			t.Errorf("Direction, Family = %d, %d, want %d, 4", c.Direction, c.Family, portlifeDirectionDIRECTION_OUTBOUND)
		}
	})
}

func TestRaddrKey(t *testing.T) {
	tests := []struct {
		name          string
		prefix        string
		wantPrefixlen uint32
		wantAddr      string // the 16 key bytes, written as an IPv6 address
	}{
		{"IPv4 is v4-mapped: 96 more bits, and masked", "10.1.2.3/8", 104, "::ffff:10.0.0.0"},
		{"IPv4 host", "192.168.1.77/32", 128, "::ffff:192.168.1.77"},
		{"IPv4 any still requires an IPv4 peer", "0.0.0.0/0", 96, "::ffff:0.0.0.0"},
		{"IPv6 is kept, and masked", "fd12:3456::1/8", 8, "fd00::"},
		{"IPv6 network", "fd00::/8", 8, "fd00::"},
		{"IPv6 any", "::/0", 0, "::"},
		{"IPv6 host", "2001:db8::1/128", 128, "2001:db8::1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := raddrKey(netip.MustParsePrefix(tt.prefix))
			if got.Prefixlen != tt.wantPrefixlen {
				t.Errorf("Prefixlen = %d, want %d", got.Prefixlen, tt.wantPrefixlen)
			}
			if want := netip.MustParseAddr(tt.wantAddr).As16(); got.Addr != want {
				t.Errorf("Addr = %v, want %v", netip.AddrFrom16(got.Addr), netip.AddrFrom16(want))
			}
		})
	}
}

func ranges(n int) []event.PortRange {
	out := make([]event.PortRange, n)
	for i := range out {
		out[i] = event.PortRange{Lo: uint16(1000 + i), Hi: uint16(1000 + i)}
	}
	return out
}
