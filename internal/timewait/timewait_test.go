package timewait

import (
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/portlife/portlife/internal/event"
)

// finish places a release from what the sweeps saw: these cases pin each
// rule, with the close at c and times in seconds after it.
func TestFinish(t *testing.T) {
	c := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(s float64) time.Time {
		if s < 0 {
			return time.Time{}
		}
		return c.Add(time.Duration(s * float64(time.Second)))
	}
	tests := []struct {
		name                     string
		seen                     bool
		lastSeen, expiry, reused float64 // -1: none
		goneLo, goneHi           float64
		overflowed               bool
		want                     event.Release
		wantAt                   float64
	}{
		{"expired: gone between two sweeps after its expiry", true, 60.3, 60, -1, 60.3, 61.3, false, event.ReleaseExpired, 60.8},
		{"expired: a timer never fires early, so the window starts at the expiry", true, 59.8, 60, -1, 59.8, 60.9, false, event.ReleaseExpired, 60.45},
		{"killed: gone before its expiry", true, 29.5, 60, -1, 29.5, 30.5, false, event.ReleaseKilled, 30},
		{"killed before the first sweep saw it", false, -1, -1, -1, 0, 0.8, false, event.ReleaseKilled, 0.4},
		{"reused before its expiry: at the new connect", true, 9.5, 60, 10, 9.5, 10.5, false, event.ReleaseReused, 10},
		{"reused before the first sweep", false, -1, -1, 0.2, 0, 0.9, false, event.ReleaseReused, 0.2},
		{"an open after its expiry: expired, before that open", true, 60.1, 60, 60.5, 60.1, 61.1, false, event.ReleaseExpired, 60.3},
		{"an open after it was gone is no reuse", true, 60.1, 60, 70, 60.1, 61.1, false, event.ReleaseExpired, 60.6},
		{"overflow: freed at the close", false, -1, -1, -1, 0, 0, true, event.ReleaseOverflow, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			en := entry{
				ev:       closedFrom(&event.Event{Kind: event.KindClose, Proto: event.ProtoTCP, Time: c, TimeWait: true, Cookie: 7}),
				seen:     tt.seen,
				lastSeen: at(tt.lastSeen),
				expiry:   at(tt.expiry),
				reusedAt: at(tt.reused),
				gone:     true,
				goneLo:   at(tt.goneLo),
				goneHi:   at(tt.goneHi),
			}
			if tt.overflowed {
				en.seenRound = ^uint64(0)
			}
			r := (&Tracker{}).finish(&en)
			if r.Kind != event.KindReleased || r.Release != tt.want || !r.Time.Equal(at(tt.wantAt)) || !r.Start.Equal(c) || r.Cookie != 7 {
				t.Errorf("got %v %v at %v (start %v, cookie %d), want released %v at %v (start %v, cookie 7)",
					r.Kind, r.Release, r.Time.Sub(c), r.Start.Sub(c), r.Cookie, tt.want, at(tt.wantAt).Sub(c), time.Duration(0))
			}
		})
	}
}

func TestParseOverflows(t *testing.T) {
	const netstat = "TcpExt: SyncookiesSent TCPTimeWaitOverflow TWKilled\n" +
		"TcpExt: 1 42 3\n" +
		"IpExt: InNoRoutes\nIpExt: 0\n"
	tests := []struct {
		name string
		in   string
		want uint64
		ok   bool
	}{
		{"the TcpExt pair", netstat, 42, true},
		{"no TcpExt", "IpExt: InNoRoutes\nIpExt: 0\n", 0, false},
		{"a kernel without the counter", "TcpExt: SyncookiesSent\nTcpExt: 1\n", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseOverflows([]byte(tt.in))
			if (err == nil) != tt.ok || got != tt.want {
				t.Errorf("got %d, %v; want %d, ok=%v", got, err, tt.want, tt.ok)
			}
		})
	}
}

// A released event names the close's connection and owner as the close did.
func TestReleasedRepeatsTheClose(t *testing.T) {
	var comm, thread event.Comm
	copy(comm[:], "curl")
	copy(thread[:], "worker")
	c := event.Event{
		Kind: event.KindClose, Proto: event.ProtoTCP, Family: 6,
		Time: time.Unix(100, 5), Start: time.Unix(90, 0), Established: time.Unix(91, 0),
		PID: 1, TID: 2, UID: 3, Comm: comm, Thread: thread, CgroupID: 4, NetNS: 5,
		PIDSource: event.PIDSourceClose, ListenerPID: 6,
		Local: netip.MustParseAddrPort("[2001:db8::1]:40000"), Remote: netip.MustParseAddrPort("[2001:db8::2]:443"),
		Direction: event.DirectionOutbound, Ephemeral: true, Cookie: 7, PreExisting: true,
		TxBytes: 8, RxBytes: 9, TimeWait: true, ClosedBy: event.ClosedByLocal,
	}
	at := time.Unix(160, 0)
	cl := closedFrom(&c)
	got := cl.released(event.ReleaseExpired, at)
	want := event.Event{
		Kind: event.KindReleased, Proto: c.Proto, Family: c.Family, Time: at, Start: c.Time,
		PID: c.PID, TID: c.TID, UID: c.UID, Comm: c.Comm, Thread: c.Thread, CgroupID: c.CgroupID, NetNS: c.NetNS,
		PIDSource: c.PIDSource, ListenerPID: c.ListenerPID, Local: c.Local, Remote: c.Remote,
		Direction: c.Direction, Ephemeral: c.Ephemeral, Cookie: c.Cookie, PreExisting: c.PreExisting,
		Release: event.ReleaseExpired,
	}
	if got != want {
		t.Errorf("released:\n got  %+v\n want %+v", got, want)
	}
}

// collect is a Publisher that keeps what it gets.
type collect []event.Event

func (c *collect) Publish(e *event.Event) error {
	*c = append(*c, *e)
	return nil
}

// A close whose namespace no process or mount shows any more: destroying
// the namespace purged its TIME_WAIT, so it is released as killed, between
// the close and the sweep that found the namespace gone.
func TestNetnsGoneIsKilled(t *testing.T) {
	var got collect
	tr := New(Config{Interval: time.Hour}, &got, zaptest.NewLogger(t))
	closedAt := time.Now().Add(-300 * time.Millisecond)
	const gone = 1 // no namespace has inode 1
	tr.Write(&event.Event{Kind: event.KindClose, Proto: event.ProtoTCP, TimeWait: true, NetNS: gone, Cookie: 9, Time: closedAt})
	time.Sleep(time.Millisecond)
	before := time.Now()
	tr.sweep()
	if len(got) != 1 {
		t.Fatalf("published %+v, want one release", got)
	}
	r := got[0]
	if r.Kind != event.KindReleased || r.Release != event.ReleaseKilled || r.Cookie != 9 || r.Time.Before(closedAt) || r.Time.After(before) {
		t.Errorf("released %v %v at %v, cookie %d; want killed, cookie 9, between the close %v and the sweep %v", r.Kind, r.Release, r.Time, r.Cookie, closedAt, before)
	}
	if s := tr.Stats(); s.Killed != 1 || s.NetnsGone != 1 || s.Pending != 0 || s.Lost() != 0 {
		t.Errorf("stats %+v: want 1 killed, 1 netns_gone, nothing pending or lost", s)
	}
}

// A watch found gone waits for a reusing open to come through the stream:
// until the stream is a grace past its going, or idle a grace after it.
func TestReadyWaitsForTheStream(t *testing.T) {
	gone := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tr := New(Config{Grace: 2 * time.Second}, &collect{}, zaptest.NewLogger(t))
	s := func(d float64) time.Time { return gone.Add(time.Duration(d * float64(time.Second))) }
	tests := []struct {
		name           string
		overflowed     bool
		now, watermark float64
		idle           bool
		want           bool
	}{
		{"an overflow goes at once", true, 0, -5, false, true},
		{"the stream is not past the grace yet", false, 3, 1.5, false, false},
		{"the stream delivered events a grace past its going", false, 2.1, 2, false, true},
		{"behind by more than the grace, and flowing: a backlog", false, 10, 1, false, false},
		{"idle, and the grace is over", false, 2.5, 0.5, true, true},
		{"idle, within the grace", false, 1, 0.5, true, false},
		{"a stalled watermark waits no longer than maxWait", false, 31, 0, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			en := entry{gone: true, goneLo: s(-1), goneHi: gone}
			if tt.overflowed {
				en.seenRound = ^uint64(0)
			}
			if got := tr.ready(&en, s(tt.now), s(tt.watermark), tt.idle); got != tt.want {
				t.Errorf("ready = %v, want %v", got, tt.want)
			}
		})
	}
}

// A sweep that takes long pushes the next one back, so that sweeping stays
// under 1/sweepShare of a CPU however many TIME_WAITs there are.
func TestNextSweep(t *testing.T) {
	tests := []struct {
		name          string
		interval      time.Duration
		took          time.Duration
		want          time.Duration
		wantStretched bool
	}{
		{"100k TIME_WAITs at 40ms keep the interval", time.Second, 40 * time.Millisecond, time.Second, false},
		{"at the share exactly", time.Second, 100 * time.Millisecond, time.Second, false},
		{"a 250ms sweep waits 2.5s", time.Second, 250 * time.Millisecond, 2500 * time.Millisecond, true},
		{"short interval stretched sooner", 200 * time.Millisecond, 40 * time.Millisecond, 400 * time.Millisecond, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, stretched := nextSweep(tt.interval, tt.took)
			if got != tt.want || stretched != tt.wantStretched {
				t.Errorf("nextSweep(%v, %v) = %v, %v; want %v, %v", tt.interval, tt.took, got, stretched, tt.want, tt.wantStretched)
			}
		})
	}
}
