package event

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

func TestReason(t *testing.T) {
	const (
		tcp, udp = ProtoTCP, ProtoUDP
		inCall   = true
	)
	tests := []struct {
		name   string
		kind   Kind
		proto  Proto
		inCall bool // seen at the call's return, not by TCP's state machine
		lport  uint16
		errno  unix.Errno
		want   string
	}{
		{"no local port: EADDRNOTAVAIL from connect", KindConnectFailed, tcp, false, 0, unix.EADDRNOTAVAIL, "no_ephemeral_port"},
		{"no local port wins over the socket error", KindConnectFailed, tcp, false, 0, unix.ECONNREFUSED, "no_ephemeral_port"},
		{"refused", KindConnectFailed, tcp, false, 40000, unix.ECONNREFUSED, "refused"},
		{"timeout", KindConnectFailed, tcp, false, 40000, unix.ETIMEDOUT, "timeout"},
		{"host unreachable", KindConnectFailed, tcp, false, 40000, unix.EHOSTUNREACH, "unreachable"},
		{"network unreachable", KindConnectFailed, tcp, false, 40000, unix.ENETUNREACH, "unreachable"},
		{"no error: closed before connecting", KindConnectFailed, tcp, false, 40000, 0, "aborted"},
		{"an errno with no word by its name", KindConnectFailed, tcp, false, 40000, unix.EPROTO, "EPROTO"},
		{"an errno with no name", KindConnectFailed, tcp, false, 40000, unix.Errno(4000), "error"},
		{"in the call, no route: not a port problem though no port", KindConnectFailed, tcp, inCall, 0, unix.ENETUNREACH, "unreachable"},
		{"in the call, no source address: EADDRNOTAVAIL is not a port", KindConnectFailed, tcp, inCall, 0, unix.EADDRNOTAVAIL, "EADDRNOTAVAIL"},
		{"in the call, refused by policy (EPERM)", KindConnectFailed, tcp, inCall, 0, unix.EPERM, "denied"},
		{"in the call, refused by policy (EACCES)", KindConnectFailed, udp, inCall, 40000, unix.EACCES, "denied"},
		{"in the call, invalid", KindConnectFailed, tcp, inCall, 0, unix.EINVAL, "EINVAL"},
		{"UDP connect found no port", KindConnectFailed, udp, inCall, 0, unix.EAGAIN, "no_ephemeral_port"},
		{"UDP connect unreachable from a bound port", KindConnectFailed, udp, inCall, 40000, unix.ENETUNREACH, "unreachable"},
		{"bind(0) found no port", KindBindFailed, tcp, inCall, 0, unix.EADDRINUSE, "no_ephemeral_port"},
		{"bind to a port in use", KindBindFailed, udp, inCall, 8080, unix.EADDRINUSE, "address_in_use"},
		{"bind to a privileged port", KindBindFailed, tcp, inCall, 80, unix.EACCES, "denied"},
		{"bind refused by policy", KindBindFailed, tcp, inCall, 80, unix.EPERM, "denied"},
		{"bind to an address not ours", KindBindFailed, tcp, inCall, 8080, unix.EADDRNOTAVAIL, "EADDRNOTAVAIL"},
		{"close has no reason", KindClose, tcp, false, 40000, unix.ECONNREFUSED, ""},
		{"open has no reason", KindOpen, tcp, false, 0, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := Event{Kind: tt.kind, Proto: tt.proto, InCall: tt.inCall,
				Local: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), tt.lport), Errno: tt.errno}
			if got := ev.Reason(); got != tt.want {
				t.Errorf("Reason() = %q, want %q", got, tt.want)
			}
		})
	}
}
