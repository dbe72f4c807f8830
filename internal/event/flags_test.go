package event

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseNet(t *testing.T) {
	good := []struct {
		name string
		in   string
		want netip.Prefix
	}{
		{"CIDR is masked", "10.1.2.3/8", netip.MustParsePrefix("10.0.0.0/8")},
		{"IPv6 CIDR is masked", "fd12::1/8", netip.MustParsePrefix("fd00::/8")},
		{"bare IPv4 is a /32", "192.0.2.7", netip.MustParsePrefix("192.0.2.7/32")},
		{"bare IPv6 is a /128", "2001:db8::1", netip.MustParsePrefix("2001:db8::1/128")},
	}
	for _, tt := range good {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseNet(tt.in)
			if err != nil {
				t.Fatalf("ParseNet(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("ParseNet(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
	for _, in := range []string{"garbage", "10.0.0.0/33", "10.0.0", "", "10.0.0.0/8/8"} {
		t.Run("bad "+in, func(t *testing.T) {
			if got, err := ParseNet(in); err == nil {
				t.Errorf("ParseNet(%q) = %v, want an error", in, got)
			} else if !strings.Contains(err.Error(), `"`+in+`"`) {
				t.Errorf("error %q does not quote the bad value %q", err, in)
			}
		})
	}
}

func selfNetNS() uint32 {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		panic(err)
	}
	return uint32(st.Ino)
}

// value is what every flag value implements (pflag.Value).
type value interface {
	Set(string) error
	String() string
	Type() string
}

// Each flag value parses what its flag takes, fills its Filter field, and
// refuses what the kernel could not express, empty values included.
func TestFlagValues(t *testing.T) {
	tests := []struct {
		name string
		sets []string // given in turn, as a repeated flag
		v    func(f *Filter) value
		want Filter // the field the value fills; "" in wantErr
		// wantErr is a word the error of the last Set must contain.
		wantErr string
	}{
		{"events list and repeat", []string{"open,close", "connect_failed"}, func(f *Filter) value { return KindsValue(&f.Kinds) },
			Filter{Kinds: []Kind{KindOpen, KindClose, KindConnectFailed}}, ""},
		{"events unknown", []string{"opened"}, func(f *Filter) value { return KindsValue(&f.Kinds) }, Filter{}, "opened"},
		{"events empty", []string{""}, func(f *Filter) value { return KindsValue(&f.Kinds) }, Filter{}, "empty"},
		{"proto", []string{"udp,tcp"}, func(f *Filter) value { return ProtosValue(&f.Protos) },
			Filter{Protos: []Proto{ProtoUDP, ProtoTCP}}, ""},
		{"proto sctp", []string{"sctp"}, func(f *Filter) value { return ProtosValue(&f.Protos) }, Filter{}, "sctp"},
		{"pid", []string{"4242"}, func(f *Filter) value { return PIDValue{&f.PID} }, Filter{PID: 4242}, ""},
		{"pid 0 is no process", []string{"0"}, func(f *Filter) value { return PIDValue{&f.PID} }, Filter{}, "process id"},
		{"pid empty", []string{""}, func(f *Filter) value { return PIDValue{&f.PID} }, Filter{}, "process id"},
		{"comm of 15 bytes", []string{"systemd-resolve"}, func(f *Filter) value { return CommValue{&f.Comm} }, Filter{Comm: "systemd-resolve"}, ""},
		{"comm of 16 bytes", []string{"0123456789abcdef"}, func(f *Filter) value { return CommValue{&f.Comm} }, Filter{}, "15 bytes"},
		{"comm empty", []string{""}, func(f *Filter) value { return CommValue{&f.Comm} }, Filter{}, "empty"},
		{"lport 9 ranges over two flags", []string{"1,2,3,4", "5-6,7,8,9,10"}, func(f *Filter) value { return PortRangesValue(&f.LocalPorts, "local port ranges") },
			Filter{}, "at most 8"},
		{"lport 8 ranges", []string{"1,2,3,4", "5-6,7,8,9"}, func(f *Filter) value { return PortRangesValue(&f.LocalPorts, "local port ranges") },
			Filter{LocalPorts: []PortRange{{1, 1}, {2, 2}, {3, 3}, {4, 4}, {5, 6}, {7, 7}, {8, 8}, {9, 9}}}, ""},
		{"rport reversed", []string{"9-1"}, func(f *Filter) value { return PortRangesValue(&f.RemotePorts, "remote port ranges") }, Filter{}, "above"},
		{"rport empty", []string{""}, func(f *Filter) value { return PortRangesValue(&f.RemotePorts, "remote port ranges") }, Filter{}, "empty"},
		{"raddr", []string{"10.1.2.3/8,::1"}, func(f *Filter) value { return NetsValue(&f.RemoteNets) },
			Filter{RemoteNets: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")}}, ""},
		{"raddr name", []string{"example.com"}, func(f *Filter) value { return NetsValue(&f.RemoteNets) }, Filter{}, "example.com"},
		{"family ipv6", []string{"ipv6"}, func(f *Filter) value { return FamilyValue{&f.Family} }, Filter{Family: 6}, ""},
		{"family 5", []string{"5"}, func(f *Filter) value { return FamilyValue{&f.Family} }, Filter{}, "4 or 6"},
		{"family empty", []string{""}, func(f *Filter) value { return FamilyValue{&f.Family} }, Filter{}, "4 or 6"},
		{"direction inbound", []string{"inbound"}, func(f *Filter) value { return DirectionValue{&f.Direction} }, Filter{Direction: DirectionInbound}, ""},
		{"direction unknown is no filter", []string{"unknown"}, func(f *Filter) value { return DirectionValue{&f.Direction} }, Filter{}, "outbound or inbound"},
		{"min-duration", []string{"10ms"}, func(f *Filter) value { return MinDurationValue{&f.MinDuration} }, Filter{MinDuration: 10 * time.Millisecond}, ""},
		{"min-duration negative", []string{"-1s"}, func(f *Filter) value { return MinDurationValue{&f.MinDuration} }, Filter{}, "negative"},
		{"min-duration without a unit", []string{"10"}, func(f *Filter) value { return MinDurationValue{&f.MinDuration} }, Filter{}, "duration"},
		{"unit bare name is a service", []string{"nginx,session-3.scope", "web.service"}, func(f *Filter) value { return UnitsValue(&f.Units) },
			Filter{Units: []string{"nginx.service", "session-3.scope", "web.service"}}, ""},
		{"unit with a slash", []string{"system.slice/nginx.service"}, func(f *Filter) value { return UnitsValue(&f.Units) }, Filter{}, "systemd unit"},
		{"unit empty", []string{""}, func(f *Filter) value { return UnitsValue(&f.Units) }, Filter{}, "empty"},
		{"container short id, upper case", []string{"0123456789AB"}, func(f *Filter) value { return ContainersValue(&f.Containers) },
			Filter{Containers: []string{"0123456789ab"}}, ""},
		{"container too short", []string{"0123456"}, func(f *Filter) value { return ContainersValue(&f.Containers) }, Filter{}, "12"},
		{"container not hex", []string{"my-container-name"}, func(f *Filter) value { return ContainersValue(&f.Containers) }, Filter{}, "hex"},
		{"netns inode", []string{"4026531840"}, func(f *Filter) value { return NetNSValue{&f.NetNS} }, Filter{NetNS: []uint32{4026531840}}, ""},
		{"netns path", []string{"/proc/self/ns/net"}, func(f *Filter) value { return NetNSValue{&f.NetNS} }, Filter{NetNS: []uint32{selfNetNS()}}, ""},
		{"netns not a namespace", []string{"/etc/hostname"}, func(f *Filter) value { return NetNSValue{&f.NetNS} }, Filter{}, "not a namespace"},
		{"netns name", []string{"blue"}, func(f *Filter) value { return NetNSValue{&f.NetNS} }, Filter{}, "/run/netns/NAME"},
		{"netns empty", []string{""}, func(f *Filter) value { return NetNSValue{&f.NetNS} }, Filter{}, "empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var f Filter
			v := tt.v(&f)
			var err error
			for _, s := range tt.sets {
				if err = v.Set(s); err != nil {
					break
				}
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Set(%q) = %v, want an error about %q", tt.sets, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Set(%q): %v", tt.sets, err)
			}
			if !reflect.DeepEqual(f, tt.want) {
				t.Errorf("Set(%q) filled %+v, want %+v", tt.sets, f, tt.want)
			}
			if err := f.Validate(); err != nil {
				t.Errorf("a filter the flags accepted fails Validate: %v", err)
			}
			if v.String() == "" || v.Type() == "" {
				t.Errorf("String() = %q, Type() = %q: help needs both", v.String(), v.Type())
			}
		})
	}
}
