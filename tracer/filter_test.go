package tracer

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestParsePortRange(t *testing.T) {
	good := []struct {
		in   string
		want PortRange
	}{
		{"443", PortRange{443, 443}},
		{"1-2", PortRange{1, 2}},
		{" 80 ", PortRange{80, 80}},
		{"0", PortRange{0, 0}},
		{"65535", PortRange{65535, 65535}},
		{"32768-60999", PortRange{32768, 60999}},
		{"7-7", PortRange{7, 7}},
		{"0-65535", PortRange{0, 65535}},
	}
	for _, tt := range good {
		t.Run("good "+tt.in, func(t *testing.T) {
			got, err := ParsePortRange(tt.in)
			if err != nil {
				t.Fatalf("ParsePortRange(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("ParsePortRange(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
	bad := []struct{ in, why string }{
		{"", "empty"},
		{"x", "not a number"},
		{"65536", "above the highest port"},
		{"5-1", "reversed"},
		{"1-", "no upper bound"},
		{"-1", "no lower bound (or a negative port)"},
		{"1-2-3", "two dashes"},
		{"80,443", "a list, not a range"},
	}
	for _, tt := range bad {
		t.Run("bad "+tt.why, func(t *testing.T) {
			got, err := ParsePortRange(tt.in)
			if err == nil {
				t.Fatalf("ParsePortRange(%q) = %v, want an error (%s)", tt.in, got, tt.why)
			}
			// The message must quote the input so the user sees which value.
			if !strings.Contains(err.Error(), `"`+tt.in+`"`) {
				t.Errorf("error %q does not quote the input %q", err, tt.in)
			}
		})
	}
}

func TestPortRangeString(t *testing.T) {
	for _, tt := range []struct {
		r    PortRange
		want string
	}{{PortRange{443, 443}, "443"}, {PortRange{1, 2}, "1-2"}} {
		if got := tt.r.String(); got != tt.want {
			t.Errorf("%#v.String() = %q, want %q", tt.r, got, tt.want)
		}
	}
}

func ranges(n int) []PortRange {
	out := make([]PortRange, n)
	for i := range out {
		out[i] = PortRange{uint16(1000 + i), uint16(1000 + i)}
	}
	return out
}

func nets(n int) []netip.Prefix {
	out := make([]netip.Prefix, n)
	for i := range out {
		out[i] = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16)
	}
	return out
}

func TestFilterValidate(t *testing.T) {
	tests := []struct {
		name    string
		f       Filter
		wantErr string // a word the error must contain; "" means valid
	}{
		{"zero filter selects everything", Filter{}, ""},
		{"comm of the kernel's 15 bytes", Filter{Comm: "systemd-resolve"}, ""},
		{"comm of 16 bytes cannot match a kernel comm", Filter{Comm: "0123456789abcdef"}, "comm"},
		{"family 4", Filter{Family: 4}, ""},
		{"family 6", Filter{Family: 6}, ""},
		{"family 5", Filter{Family: 5}, "family"},
		{"8 local port ranges", Filter{LocalPorts: ranges(8)}, ""},
		{"9 local port ranges", Filter{LocalPorts: ranges(9)}, "local port"},
		{"8 remote port ranges", Filter{RemotePorts: ranges(8)}, ""},
		{"9 remote port ranges", Filter{RemotePorts: ranges(9)}, "remote port"},
		{"64 remote networks", Filter{RemoteNets: nets(64)}, ""},
		{"65 remote networks", Filter{RemoteNets: nets(65)}, "remote networks"},
		{"zero min duration", Filter{MinDuration: 0}, ""},
		{"negative min duration", Filter{MinDuration: -time.Millisecond}, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.f.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tt.wantErr != "" && err == nil:
				t.Errorf("Validate() = nil, want an error about %s", tt.wantErr)
			case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
				t.Errorf("Validate() = %q, want it to mention %q", err, tt.wantErr)
			}
		})
	}
}

func TestFilterWantsProto(t *testing.T) {
	tests := []struct {
		name     string
		protos   []Proto
		tcp, udp bool
	}{
		{"none listed means both", nil, true, true},
		{"tcp only", []Proto{ProtoTCP}, true, false},
		{"udp only", []Proto{ProtoUDP}, false, true},
		{"both listed", []Proto{ProtoUDP, ProtoTCP}, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := Filter{Protos: tt.protos}
			if got := f.wantsProto(ProtoTCP); got != tt.tcp {
				t.Errorf("wantsProto(tcp) = %v, want %v", got, tt.tcp)
			}
			if got := f.wantsProto(ProtoUDP); got != tt.udp {
				t.Errorf("wantsProto(udp) = %v, want %v", got, tt.udp)
			}
		})
	}
}

func TestKernelConfig(t *testing.T) {
	const (
		bitOpen   = 1 << 1 // 1 << EVENT_OPEN
		bitClose  = 1 << 2 // 1 << EVENT_CLOSE
		bitFailed = 1 << 3 // 1 << EVENT_CONNECT_FAILED
	)

	t.Run("zero filter sends every kind and matches everything", func(t *testing.T) {
		var f Filter
		var want portlifeConfig
		want.WakeupBytes = 4096
		want.Events = bitOpen | bitClose | bitFailed
		if got := f.kernelConfig(4096); got != want {
			t.Errorf("kernelConfig:\n got  %+v\n want %+v", got, want)
		}
	})

	t.Run("every filter field lands in its config field", func(t *testing.T) {
		f := Filter{
			PID:           4242,
			Comm:          "nginx",
			Protos:        []Proto{ProtoTCP}, // applied by attaching, not in the config
			Family:        6,
			Direction:     DirectionInbound,
			LocalPorts:    []PortRange{{443, 443}, {8000, 8999}},
			RemotePorts:   []PortRange{{53, 53}},
			RemoteNets:    []netip.Prefix{netip.MustParsePrefix("fd00::/8")},
			EphemeralOnly: true,
			MinDuration:   10 * time.Millisecond,
			Kinds:         []Kind{KindClose, KindConnectFailed},
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
		want.Family = 6
		want.Direction = uint8(portlifeDirectionDIRECTION_INBOUND)
		want.EphemeralOnly = 1
		want.MatchRaddr = 1
		want.MatchComm = 1
		want.Comm = [16]int8{'n', 'g', 'i', 'n', 'x'}
		if got := f.kernelConfig(1 << 20); got != want {
			t.Errorf("kernelConfig:\n got  %+v\n want %+v", got, want)
		}
	})

	t.Run("one kind sets one bit", func(t *testing.T) {
		for _, tt := range []struct {
			k    Kind
			want uint32
		}{{KindOpen, bitOpen}, {KindClose, bitClose}, {KindConnectFailed, bitFailed}} {
			f := Filter{Kinds: []Kind{tt.k}}
			if got := f.kernelConfig(0).Events; got != tt.want {
				t.Errorf("Kinds [%v]: events = %#x, want %#x", tt.k, got, tt.want)
			}
		}
	})

	t.Run("a full comm fills 15 bytes and keeps the NUL", func(t *testing.T) {
		f := Filter{Comm: "systemd-resolve"}
		c := f.kernelConfig(0)
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
		f := Filter{LocalPorts: ranges(MaxPortRanges), RemotePorts: ranges(MaxPortRanges)}
		c := f.kernelConfig(0)
		if int(c.N_lports) != MaxPortRanges || int(c.N_rports) != MaxPortRanges {
			t.Errorf("N_lports, N_rports = %d, %d, want %d", c.N_lports, c.N_rports, MaxPortRanges)
		}
		last := ranges(MaxPortRanges)[MaxPortRanges-1]
		if c.Lports[MaxPortRanges-1].Lo != last.Lo || c.Rports[MaxPortRanges-1].Hi != last.Hi {
			t.Errorf("last ranges = %+v %+v, want %v", c.Lports[MaxPortRanges-1], c.Rports[MaxPortRanges-1], last)
		}
	})

	t.Run("outbound direction", func(t *testing.T) {
		f := Filter{Direction: DirectionOutbound, Family: 4}
		c := f.kernelConfig(0)
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
