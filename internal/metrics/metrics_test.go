package metrics

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/event"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func events() []event.Event {
	base := event.Event{Proto: event.ProtoTCP, Direction: event.DirectionOutbound, Start: t0, Remote: netip.MustParseAddrPort("10.0.0.1:443")}
	open, cls, fail, udp := base, base, base, base
	open.Kind = event.KindOpen
	cls.Kind, cls.Time, cls.TimeWait = event.KindClose, t0.Add(3*time.Millisecond), true
	fail.Kind, fail.Errno, fail.Time, fail.Local = event.KindConnectFailed, unix.ECONNREFUSED, t0, netip.MustParseAddrPort("10.0.0.5:40000")
	udp.Proto, udp.Kind, udp.Direction, udp.Time = event.ProtoUDP, event.KindClose, event.DirectionInbound, t0.Add(2*time.Second)
	sum := event.Event{Kind: event.KindSummary, Proto: event.ProtoTCP, Summary: &event.Summary{Opened: 5}}
	return []event.Event{open, cls, fail, udp, sum}
}

// Each event counts once, in its series; summaries are not connections.
func TestCounts(t *testing.T) {
	c := NewCounts()
	for _, e := range events() {
		c.Write(&e)
	}
	reg := NewRegistry(c, Sources{}, BuildInfo{"v1", "abc", "go1.26"})
	want := `
# HELP portlife_connections_failed_total Failed connects and binds (connect_failed and bind_failed events), by protocol, direction and reason.
# TYPE portlife_connections_failed_total counter
portlife_connections_failed_total{direction="outbound",proto="tcp",reason="refused"} 1
# HELP portlife_time_wait_entered_total TCP connections closed into TIME_WAIT, by direction.
# TYPE portlife_time_wait_entered_total counter
portlife_time_wait_entered_total{direction="inbound"} 0
portlife_time_wait_entered_total{direction="outbound"} 1
portlife_time_wait_entered_total{direction="unknown"} 0
# HELP portlife_build_info A constant 1, labelled with the version, the commit and the Go version portlife was built with.
# TYPE portlife_build_info gauge
portlife_build_info{goversion="go1.26",revision="abc",version="v1"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "portlife_connections_failed_total", "portlife_time_wait_entered_total", "portlife_build_info"); err != nil {
		t.Error(err)
	}
	s := c.snapshot()
	if s.opened[0][1] != 1 || s.closed[0][1] != 1 || s.closed[1][2] != 1 {
		t.Errorf("opened %v closed %v", s.opened, s.closed)
	}
	if h := s.lifetime[0][1]; h.n != 1 || h.counts[3] != 1 {
		t.Errorf("a 3ms lifetime is not in the 5ms bucket: %+v", h.counts)
	}
	if h := s.lifetime[1][2]; h.counts[9] != 1 {
		t.Errorf("a 2s lifetime is not in the 5s bucket: %+v", h.counts)
	}
}

// Counting allocates nothing once a series exists.
func TestCountsNoAllocs(t *testing.T) {
	c := NewCounts()
	evs := events()
	for i := range evs {
		c.Write(&evs[i])
	}
	if n := testing.AllocsPerRun(1000, func() {
		for i := range evs {
			c.Write(&evs[i])
		}
	}); n != 0 {
		t.Errorf("Write allocates %v times per event", n)
	}
}

// Only the TopKeys most pressed keys get series, however many accounting
// hands over; released series only with --released.
func TestPortSeriesBounded(t *testing.T) {
	for _, tt := range []struct {
		name     string
		keys     int
		released bool
		want     int // series of portlife_port_pressure_ratio
	}{
		{"fewer keys than the bound", 3, false, 3},
		{"more keys than the bound", 3 * TopKeys, true, TopKeys},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var p PortStats
			for i := range tt.keys {
				p.Top = append(p.Top, PortKey{Mechanism: "per_destination", Destination: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), uint16(i+1)).String(), Used: i, Capacity: 100})
			}
			reg := NewRegistry(NewCounts(), Sources{Ports: func() PortStats { return p }, Released: tt.released}, BuildInfo{})
			if n := testutil.CollectAndCount(reg, "portlife_port_pressure_ratio"); n != tt.want {
				t.Errorf("%d pressure series, want %d", n, tt.want)
			}
			if n, want := testutil.CollectAndCount(reg, "portlife_time_wait_released_total"), map[bool]int{false: 0, true: 4}[tt.released]; n != want {
				t.Errorf("%d released series, want %d", n, want)
			}
		})
	}
}
