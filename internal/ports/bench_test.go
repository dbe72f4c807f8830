package ports

import (
	"net/netip"
	"testing"
	"time"

	"github.com/portlife/portlife/internal/event"
)

// BenchmarkChurn is the accountant's work per outbound TCP connection at
// 10,000 connections a second, our side closing first: an open, a close
// into TIME_WAIT, and a Flush every 100 ms that ages what is due. The
// TIME_WAITs of the last 60 s (600,000) stay tracked, as on a host at that
// churn; four loopback sources to one destination, as bench/churn makes.
func BenchmarkChurn(b *testing.B) {
	for _, tt := range []struct {
		name  string
		reuse int // tcp_tw_reuse: 2 reuses TIME_WAITs on loopback only
		dst   netip.AddrPort
	}{
		{"loopback", 2, netip.MustParseAddrPort("127.0.0.1:8080")},
		{"remote", 2, netip.MustParseAddrPort("192.0.2.10:443")},
	} {
		b.Run(tt.name, func(b *testing.B) {
			s := DefaultSysctls
			s.TWReuse = tt.reuse
			now := t0
			a := New(Config{
				Now:        func() time.Time { return now },
				Sysctls:    func(uint32, ...uint32) (Sysctls, error) { return s, nil },
				Publish:    func(*event.Event) error { return nil },
				MaxSockets: 1 << 21,
			})
			srcs := []netip.Addr{
				netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3"),
				netip.MustParseAddr("127.0.0.4"), netip.MustParseAddr("127.0.0.5"),
			}
			const perConn = 100 * time.Microsecond // 10,000 a second
			var e event.Event
			conn := func(i int) {
				now = now.Add(perConn)
				src := srcs[i%len(srcs)]
				lport := uint16(32768 + (i/len(srcs))%28000)
				e = event.Event{
					Kind: event.KindOpen, Proto: event.ProtoTCP, Family: 4, Time: now, Start: now,
					PID: 100, NetNS: 1, Direction: event.DirectionOutbound, Cookie: uint64(i + 1),
					Local: netip.AddrPortFrom(src, lport), Remote: tt.dst,
				}
				a.Write(&e)
				e.Kind, e.TimeWait = event.KindClose, true
				a.Write(&e)
				if i%1000 == 0 { // every 100 ms
					a.Flush()
				}
			}
			for i := range 600_000 { // the last 60 s of TIME_WAITs
				conn(i)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				conn(600_000 + i)
			}
			b.ReportMetric(float64(a.sockets.len()), "sockets") // held at the end: bounded
		})
	}
}
