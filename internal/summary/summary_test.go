package summary

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/event"
	"github.com/portlife/portlife/internal/stream"
)

// published keeps what a Summarizer publishes.
type published struct {
	mu     sync.Mutex
	events []event.Event
	err    error
}

func (p *published) Publish(e *event.Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	p.events = append(p.events, *e)
	return nil
}

func comm(s string) (c event.Comm) {
	copy(c[:], s)
	return c
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// conn is one outbound connection of proc to dest: open and close, with a
// lifetime; or a refused connect if refused.
func conn(proc string, dest string, lifetime time.Duration, refused bool) []event.Event {
	base := event.Event{Proto: event.ProtoTCP, Comm: comm(proc), Direction: event.DirectionOutbound, Family: 4,
		Local: netip.MustParseAddrPort("127.0.0.1:40000"), Remote: netip.MustParseAddrPort(dest), Start: t0}
	if refused {
		base.Kind, base.Errno, base.Time = event.KindConnectFailed, unix.ECONNREFUSED, t0.Add(time.Millisecond)
		return []event.Event{base}
	}
	open, cls := base, base
	open.Kind, open.Time = event.KindOpen, t0
	cls.Kind, cls.Time, cls.TxBytes, cls.RxBytes, cls.TimeWait = event.KindClose, t0.Add(lifetime), 100, 1000, true
	return []event.Event{open, cls}
}

// A known workload: three processes, each to its own destination, with
// known lifetimes and failures. The top N get rows of their own, the rest
// one `other` row, and every count sums to the workload's.
func TestSummaryRowsAndOther(t *testing.T) {
	type work struct {
		proc, dest string
		conns      int
		lifetime   func(i int) time.Duration
		refused    int
	}
	works := []work{
		{"big", "10.0.0.1:443", 300, func(i int) time.Duration { return time.Duration(i+1) * time.Millisecond }, 7},
		{"mid", "10.0.0.2:5432", 100, func(i int) time.Duration { return time.Duration(i+1) * 20 * time.Millisecond }, 0},
		{"small", "10.0.0.3:53", 10, func(i int) time.Duration { return 2 * time.Second }, 2},
		{"tiny", "10.0.0.4:80", 1, func(i int) time.Duration { return time.Millisecond }, 0},
	}
	for _, tt := range []struct {
		name    string
		topN    int
		maxKeys int
		rows    []string // comm of each row, in order
	}{
		{"all keys in rows", 10, 100, []string{"big", "mid", "small", "tiny"}},
		{"top 2 and other", 2, 100, []string{"big", "mid", "other"}},
		{"beyond max keys, straight to other", 10, 2, []string{"big", "mid", "other"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pub := &published{}
			s := New(Config{Interval: time.Hour, TopN: tt.topN, MaxKeys: tt.maxKeys}, pub)
			var lifetimes = map[string][]time.Duration{}
			for _, w := range works {
				for i := range w.conns {
					for _, e := range conn(w.proc, w.dest, w.lifetime(i), false) {
						s.Write(&e)
					}
					lifetimes[w.proc] = append(lifetimes[w.proc], w.lifetime(i))
				}
				for range w.refused {
					e := conn(w.proc, w.dest, 0, true)[0]
					s.Write(&e)
				}
			}
			// Its own summaries come back to it through the stream: ignored.
			s.Write(&event.Event{Kind: event.KindSummary, Summary: &event.Summary{Opened: 99}})
			s.publish(t0.Add(time.Minute), false)

			var got []string
			var total event.Summary
			for _, e := range pub.events {
				got = append(got, e.Comm.String())
				sm := e.Summary
				if e.Kind != event.KindSummary || sm == nil || !e.Time.Equal(t0.Add(time.Minute)) {
					t.Fatalf("not a summary of the interval: %+v", e)
				}
				total.Opened += sm.Opened
				total.Closed += sm.Closed
				total.Failed += sm.Failed
				total.Lifetimes += sm.Lifetimes
				total.TimeWait += sm.TimeWait
				total.TxBytes += sm.TxBytes
				total.Keys += sm.Keys
				if sm.Other {
					continue
				}
				var w work
				for _, x := range works {
					if x.proc == e.Comm.String() {
						w = x
					}
				}
				if sm.Opened != uint64(w.conns) || sm.Closed != uint64(w.conns) || sm.Failed != uint64(w.refused) || sm.Keys != 1 {
					t.Errorf("%s: opened %d closed %d failed %d keys %d, want %d %d %d 1", w.proc, sm.Opened, sm.Closed, sm.Failed, sm.Keys, w.conns, w.conns, w.refused)
				}
				if w.refused > 0 && !slices.Equal(sm.Failures, []event.ReasonCount{{Reason: "refused", Count: uint64(w.refused)}}) {
					t.Errorf("%s: failures %+v", w.proc, sm.Failures)
				}
				if e.Remote != netip.MustParseAddrPort(w.dest) || e.Direction != event.DirectionOutbound {
					t.Errorf("%s: destination %v %v, want %s outbound", w.proc, e.Remote, e.Direction, w.dest)
				}
				lt := slices.Sorted(slices.Values(lifetimes[w.proc]))
				for _, p := range []struct {
					q   float64
					got time.Duration
				}{{0.5, sm.P50}, {0.9, sm.P90}, {0.99, sm.P99}} {
					exact := lt[int(p.q*float64(len(lt)-1))]
					if diff := abs(p.got - exact); float64(diff) > event.LifetimeError*float64(exact) {
						t.Errorf("%s: p%v = %v, exact %v", w.proc, p.q*100, p.got, exact)
					}
				}
				under := 0
				for _, d := range lt {
					if d < time.Second {
						under++
					}
				}
				if sm.UnderOneSecond != uint64(under) {
					t.Errorf("%s: %d under 1s, want %d", w.proc, sm.UnderOneSecond, under)
				}
			}
			if !slices.Equal(got, tt.rows) {
				t.Errorf("rows %q, want %q", got, tt.rows)
			}
			var want event.Summary
			for _, w := range works {
				want.Opened += uint64(w.conns)
				want.Closed += uint64(w.conns)
				want.Failed += uint64(w.refused)
				want.Lifetimes += uint64(w.conns)
				want.TimeWait += uint64(w.conns)
				want.TxBytes += 100 * uint64(w.conns)
			}
			want.Keys = total.Keys // checked apart: the overflow counts as one key
			if fmt.Sprint(total) != fmt.Sprint(want) {
				t.Errorf("rows add up to %+v, want %+v", total, want)
			}

			// The next interval starts empty.
			pub.events = nil
			s.publish(t0.Add(2*time.Minute), false)
			if len(pub.events) != 0 {
				t.Errorf("an empty interval published %d rows", len(pub.events))
			}
		})
	}
}

// A known key costs no allocation per event.
func TestSummaryWriteNoAllocs(t *testing.T) {
	s := New(Config{Interval: time.Hour}, &published{})
	evs := conn("web", "10.0.0.1:443", time.Millisecond, false)
	evs = append(evs, conn("web", "10.0.0.1:443", 0, true)...)
	for i := range evs {
		s.Write(&evs[i])
	}
	if n := testing.AllocsPerRun(1000, func() {
		for i := range evs {
			s.Write(&evs[i])
		}
	}); n != 0 {
		t.Errorf("Write allocates %v times per event", n)
	}
}

// Inbound rows are keyed by the local port served, whatever address
// accepted them.
func TestSummaryInboundKey(t *testing.T) {
	a := event.Event{Direction: event.DirectionInbound, Local: netip.MustParseAddrPort("10.0.0.5:8080"), Remote: netip.MustParseAddrPort("10.0.0.9:50000")}
	b := a
	b.Local, b.Remote = netip.MustParseAddrPort("127.0.0.1:8080"), netip.MustParseAddrPort("127.0.0.1:50001")
	if KeyOf(&a) != KeyOf(&b) {
		t.Errorf("%+v and %+v differ", KeyOf(&a), KeyOf(&b))
	}
	if k := KeyOf(&a); k.Dest != netip.MustParseAddrPort("0.0.0.0:8080") {
		t.Errorf("inbound destination %v", k.Dest)
	}
}

// Finish publishes the last, partial interval through a real stream, after
// the events queued before it; after the stream closes, a summary that
// cannot go out is counted as lost.
func TestSummaryFinish(t *testing.T) {
	out := &published{}
	st := stream.New(consumerOf(out))
	s := New(Config{Interval: time.Hour}, st)
	st.Subscribe("summary", s, 1024)
	for _, e := range conn("web", "10.0.0.1:443", time.Millisecond, false) {
		st.Write(&e)
	}
	if !s.Finish(st.Flush, 5*time.Second) {
		t.Fatal("the last interval did not go out")
	}
	st.Close()
	var sums []event.Event
	for _, e := range out.events {
		if e.Kind == event.KindSummary {
			sums = append(sums, e)
		}
	}
	if len(sums) != 1 || sums[0].Summary.Opened != 1 || sums[0].Summary.Closed != 1 {
		t.Fatalf("summaries %+v, want one row of one connection", sums)
	}
	if st := s.Stats(); st.Published != 1 || st.Lost != 0 {
		t.Errorf("stats %+v", st)
	}

	// A summarizer whose stream closed first loses its last interval, counted.
	st2 := stream.New(nil)
	s2 := New(Config{Interval: time.Hour}, st2)
	st2.Subscribe("summary", s2, 16)
	for _, e := range conn("web", "10.0.0.1:443", time.Millisecond, false) {
		st2.Write(&e)
	}
	st2.Close()
	s2.finishing.Store(true)
	s2.Flush()
	if st := s2.Stats(); st.Lost != 1 {
		t.Errorf("stats %+v, want 1 lost", st)
	}
}

type consumer struct{ p *published }

func consumerOf(p *published) consumer { return consumer{p} }

func (c consumer) Write(e *event.Event) error { return c.p.Publish(e) }
func (c consumer) Flush() error               { return nil }
