package event

import (
	"net/netip"
	"slices"
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
			if got := f.WantsProto(ProtoTCP); got != tt.tcp {
				t.Errorf("WantsProto(tcp) = %v, want %v", got, tt.tcp)
			}
			if got := f.WantsProto(ProtoUDP); got != tt.udp {
				t.Errorf("WantsProto(udp) = %v, want %v", got, tt.udp)
			}
		})
	}
}

func TestFilterWantsKind(t *testing.T) {
	tests := []struct {
		name  string
		kinds []Kind
		want  []Kind
	}{
		{"none listed means all", nil, Kinds},
		{"close only", []Kind{KindClose}, []Kind{KindClose}},
		{"the failures", []Kind{KindBindFailed, KindConnectFailed}, []Kind{KindConnectFailed, KindBindFailed}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := Filter{Kinds: tt.kinds}
			for _, k := range Kinds {
				if got, want := f.WantsKind(k), slices.Contains(tt.want, k); got != want {
					t.Errorf("WantsKind(%v) = %v, want %v", k, got, want)
				}
			}
		})
	}
}

func TestFilterKeeps(t *testing.T) {
	const id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	web := Event{Unit: "web.service", NetNS: 7}
	box := Event{ContainerID: id, NetNS: 8}
	none := Event{NetNS: 7}
	for _, tt := range []struct {
		name string
		f    Filter
		keep []bool // web, box, none
	}{
		{"no filter", Filter{}, []bool{true, true, true}},
		{"unit", Filter{Units: []string{"web.service"}}, []bool{true, false, false}},
		{"container prefix", Filter{Containers: []string{id[:12]}}, []bool{false, true, false}},
		{"container full", Filter{Containers: []string{"ffffffffffff", id}}, []bool{false, true, false}},
		{"netns", Filter{NetNS: []uint32{7}}, []bool{true, false, true}},
		{"unit and netns", Filter{Units: []string{"web.service"}, NetNS: []uint32{8}}, []bool{false, false, false}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for i, e := range []*Event{&web, &box, &none} {
				if got := tt.f.Keeps(e); got != tt.keep[i] {
					t.Errorf("Keeps(%+v) = %v, want %v", *e, got, tt.keep[i])
				}
			}
		})
	}
}
