package event

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

func TestReason(t *testing.T) {
	tests := []struct {
		name  string
		kind  Kind
		lport uint16
		errno unix.Errno
		want  string
	}{
		{"no local port: EADDRNOTAVAIL from connect", KindConnectFailed, 0, unix.EADDRNOTAVAIL, "no_ephemeral_port"},
		{"no local port wins over the socket error", KindConnectFailed, 0, unix.ECONNREFUSED, "no_ephemeral_port"},
		{"refused", KindConnectFailed, 40000, unix.ECONNREFUSED, "refused"},
		{"timeout", KindConnectFailed, 40000, unix.ETIMEDOUT, "timeout"},
		{"host unreachable", KindConnectFailed, 40000, unix.EHOSTUNREACH, "unreachable"},
		{"network unreachable", KindConnectFailed, 40000, unix.ENETUNREACH, "unreachable"},
		{"no error: closed before connecting", KindConnectFailed, 40000, 0, "aborted"},
		{"other errno by its name", KindConnectFailed, 40000, unix.EACCES, "EACCES"},
		{"another errno by its name", KindConnectFailed, 40000, unix.EPERM, "EPERM"},
		{"an errno with no name", KindConnectFailed, 40000, unix.Errno(4000), "error"},
		{"close has no reason", KindClose, 40000, unix.ECONNREFUSED, ""},
		{"open has no reason", KindOpen, 0, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := Event{Kind: tt.kind, Local: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), tt.lport), Errno: tt.errno}
			if got := ev.Reason(); got != tt.want {
				t.Errorf("Reason() = %q, want %q", got, tt.want)
			}
		})
	}
}
