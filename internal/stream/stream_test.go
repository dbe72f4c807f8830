package stream

import (
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/portlife/portlife/internal/event"
)

// recorder keeps the cookie of every event it gets, so a test can check
// which events arrived, in which order.
type recorder struct {
	mu      sync.Mutex
	cookies []uint64
	flushes int
	// stall, if set, blocks the first Write until it is closed; entered is
	// closed when that Write starts.
	stall, entered chan struct{}
	fail           error
	closed         bool // the stream said nothing more will come
}

func (r *recorder) Write(e *event.Event) error {
	if r.stall != nil {
		select {
		case <-r.entered:
		default:
			close(r.entered)
			<-r.stall
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		panic("an event was delivered after Close returned")
	}
	r.cookies = append(r.cookies, e.Cookie)
	return r.fail
}

func (r *recorder) Flush() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		panic("a flush was delivered after Close returned")
	}
	r.flushes++
	return nil
}

func (r *recorder) got() []uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]uint64(nil), r.cookies...)
}

// seal makes any later delivery panic.
func (r *recorder) seal() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
}

func stalled() *recorder {
	return &recorder{stall: make(chan struct{}), entered: make(chan struct{})}
}

// publish writes events with cookies from..to-1 through s.
func publish(t *testing.T, s *Stream, from, to uint64) {
	t.Helper()
	var ev event.Event // reused, as the tracer does
	for c := from; c < to; c++ {
		ev.Cookie = c
		if err := s.Write(&ev); err != nil {
			t.Fatalf("Write: %v", err)
		}
	}
}

func sequence(from, to uint64) []uint64 {
	var s []uint64
	for c := from; c < to; c++ {
		s = append(s, c)
	}
	return s
}

func equal(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Three consumers, one of them stalled: the primary and the healthy
// subscriber get every event in order; the stalled one loses exactly what
// did not fit in its queue, and says so.
func TestFanOutWithAStalledConsumer(t *testing.T) {
	defer goleak.VerifyNone(t)
	const (
		events   = 10_000
		capacity = 64
	)
	tests := []struct {
		name         string
		healthyQueue int
	}{
		{"healthy queue as large as the burst", events},
		{"healthy queue smaller than the burst, drained as it goes", 1024},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			primary, healthy, slow := &recorder{}, &recorder{}, stalled()
			s := New(primary)
			s.Subscribe("healthy", healthy, tt.healthyQueue)
			s.Subscribe("slow", slow, capacity)

			// The first event reaches the slow consumer, which then blocks
			// with it in hand; its queue takes the next capacity events.
			publish(t, s, 0, 1)
			<-slow.entered
			for c := uint64(1); c < events; c++ {
				ev := event.Event{Cookie: c}
				if err := s.Write(&ev); err != nil {
					t.Fatal(err)
				}
				if tt.healthyQueue < events && c%512 == 0 {
					waitDelivered(t, s, "healthy", c+1)
				}
			}
			if got := s.Stats()[1].Dropped; got != events-1-capacity {
				t.Errorf("slow consumer dropped %d while stalled, want exactly %d", got, events-1-capacity)
			}
			close(slow.stall)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			for _, r := range []*recorder{primary, healthy, slow} {
				r.seal()
			}

			if got := primary.got(); !equal(got, sequence(0, events)) {
				t.Errorf("primary got %d events, want all %d in order", len(got), events)
			}
			if got := healthy.got(); !equal(got, sequence(0, events)) {
				t.Errorf("healthy subscriber got %d events, want all %d in order", len(got), events)
			}
			if got := slow.got(); !equal(got, sequence(0, capacity+1)) {
				t.Errorf("slow subscriber got %v, want the first %d events", got, capacity+1)
			}
			want := []ConsumerStats{
				{Name: "healthy", Delivered: events},
				{Name: "slow", Delivered: capacity + 1, Dropped: events - 1 - capacity},
			}
			if got := s.Stats(); len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
				t.Errorf("Stats() = %+v, want %+v", got, want)
			}
			if s.Dropped() != events-1-capacity {
				t.Errorf("Dropped() = %d, want %d", s.Dropped(), events-1-capacity)
			}
		})
	}
}

func waitDelivered(t *testing.T, s *Stream, name string, n uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, st := range s.Stats() {
			if st.Name == name && st.Delivered >= n {
				return
			}
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("%s did not get %d events in 10s", name, n)
}

// Close waits for every subscriber to write its queue and flush: events
// written before Close are delivered, nothing after, and no goroutine is
// left behind.
func TestCloseDrainsAndJoins(t *testing.T) {
	defer goleak.VerifyNone(t)
	subs := []*recorder{{}, {}, {}}
	s := New(nil)
	for i, r := range subs {
		s.Subscribe(string(rune('a'+i)), r, 100)
	}
	publish(t, s, 0, 100)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for i, r := range subs {
		r.seal() // a delivery from now on panics
		if got := r.got(); !equal(got, sequence(0, 100)) {
			t.Errorf("subscriber %d got %d events, want 100 in order", i, len(got))
		}
		if r.flushes < 1 {
			t.Errorf("subscriber %d was not flushed at Close", i)
		}
	}
	if err := s.Close(); err != nil {
		t.Errorf("a second Close: %v", err)
	}
}

// A Flush reaches a subscriber after what was queued before it.
func TestFlushFollowsQueuedEvents(t *testing.T) {
	defer goleak.VerifyNone(t)
	r := &flushOrder{}
	s := New(nil)
	s.Subscribe("ordered", r, 16)
	publish(t, s, 0, 10)
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if r.firstFlushAfter != 10 {
		t.Errorf("the first flush came after %d events, want after all 10 queued before it", r.firstFlushAfter)
	}
}

type flushOrder struct {
	n               int
	firstFlushAfter int
	flushed         bool
}

func (f *flushOrder) Write(*event.Event) error { f.n++; return nil }
func (f *flushOrder) Flush() error {
	if !f.flushed {
		f.flushed, f.firstFlushAfter = true, f.n
	}
	return nil
}

// The primary consumer's error ends the stream's Write: the output is gone.
// A subscriber's errors are counted and do not stop it.
func TestErrors(t *testing.T) {
	defer goleak.VerifyNone(t)
	broken := errors.New("broken pipe")
	t.Run("primary", func(t *testing.T) {
		s := New(&recorder{fail: broken})
		defer s.Close()
		if err := s.Write(&event.Event{}); !errors.Is(err, broken) {
			t.Errorf("Write = %v, want the primary's error", err)
		}
	})
	t.Run("subscriber", func(t *testing.T) {
		s := New(nil)
		s.Subscribe("failing", &recorder{fail: broken}, 8)
		publish(t, s, 0, 5)
		if err := s.Close(); err != nil {
			t.Fatalf("Close = %v, want nil: a subscriber's error is its own", err)
		}
		st := s.Stats()[0]
		if st.Delivered != 5 || st.Failed != 5 || !errors.Is(st.LastError, broken) {
			t.Errorf("Stats = %+v, want 5 delivered, 5 failed, last error %v", st, broken)
		}
	})
}

// The reader's path through the stream allocates nothing per event.
func TestWriteDoesNotAllocate(t *testing.T) {
	defer goleak.VerifyNone(t)
	full := stalled()
	s := New(&recorder{})
	s.Subscribe("keeping up", discard{}, 1<<16)
	s.Subscribe("full", full, 1)
	ev := event.Event{Cookie: 1}
	if n := testing.AllocsPerRun(1000, func() { s.Write(&ev) }); n != 0 {
		t.Errorf("Write allocates %.1f times per event, want 0", n)
	}
	close(full.stall)
	s.Close()
}

// Delivery to a subscriber allocates nothing per event either: its goroutine
// hands each event to the consumer from the subscriber's own slot.
func TestDeliveryDoesNotAllocate(t *testing.T) {
	defer goleak.VerifyNone(t)
	const events = 10_000
	s := New(nil)
	s.Subscribe("discard", discard{}, events)
	publish(t, s, 0, 100) // warm up: the goroutine's stack, the first park
	waitDelivered(t, s, "discard", 100)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	publish(t, s, 100, 100+events)
	waitDelivered(t, s, "discard", 100+events)
	runtime.ReadMemStats(&after)
	s.Close()
	// A handful of allocations from the runtime itself may land here; one
	// per event would be 10,000.
	if n := after.Mallocs - before.Mallocs; n > events/100 {
		t.Errorf("%d allocations while delivering %d events, want none per event", n, events)
	}
}

func BenchmarkWrite(b *testing.B) {
	for _, subs := range []int{0, 1, 3} {
		b.Run(string(rune('0'+subs))+"-subscribers", func(b *testing.B) {
			s := New(discard{})
			for i := 0; i < subs; i++ {
				s.Subscribe("discard", discard{}, 4096)
			}
			ev := event.Event{Cookie: 1}
			b.ReportAllocs()
			for b.Loop() {
				s.Write(&ev)
			}
			b.StopTimer()
			s.Close()
		})
	}
}

type discard struct{}

func (discard) Write(*event.Event) error { return nil }
func (discard) Flush() error             { return nil }

// deriver publishes one derived event for every tenth event it receives,
// from its own goroutine, as the port accounting does with pressure reports.
type deriver struct {
	s         *Stream
	published []uint64
	refused   int
}

func (d *deriver) Write(e *event.Event) error {
	if e.Kind != event.KindOpen || e.Cookie%10 != 0 {
		return nil // its own derived events come back, and are ignored
	}
	derived := event.Event{Kind: event.KindClose, Cookie: 1_000_000 + e.Cookie}
	switch err := d.s.Publish(&derived); {
	case errors.Is(err, ErrClosed):
		d.refused++
	case err == nil:
		d.published = append(d.published, derived.Cookie)
	default:
		return err
	}
	return nil
}

func (d *deriver) Flush() error { return nil }

func TestPublishFromAConsumer(t *testing.T) {
	defer goleak.VerifyNone(t)
	primary := &recorder{}
	s := New(primary)
	d := &deriver{s: s}
	s.Subscribe("accounting", d, 4096)
	other := &recorder{}
	s.Subscribe("store", other, 4096)

	const n = 1000
	for i := uint64(1); i <= n; i++ {
		e := event.Event{Kind: event.KindOpen, Cookie: i}
		if err := s.Write(&e); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Whatever the deriver published reached the primary output and the
	// other subscriber, once each; what it could not publish because the
	// stream had closed was refused, not lost without a word.
	if got, want := len(d.published)+d.refused, n/10; got != want {
		t.Fatalf("published %d + refused %d, want %d derived events", len(d.published), d.refused, want)
	}
	for _, got := range [][]uint64{primary.got(), other.got()} {
		derived := map[uint64]int{}
		originals := 0
		for _, c := range got {
			if c > 1_000_000 {
				derived[c]++
			} else {
				originals++
			}
		}
		if originals != n {
			t.Errorf("%d original events, want %d", originals, n)
		}
		for _, c := range d.published {
			if derived[c] != 1 {
				t.Errorf("derived event %d delivered %d times, want once", c, derived[c])
			}
		}
		if len(derived) != len(d.published) {
			t.Errorf("%d derived events delivered, %d published", len(derived), len(d.published))
		}
	}
	after := event.Event{Kind: event.KindOpen}
	if err := s.Publish(&after); !errors.Is(err, ErrClosed) {
		t.Errorf("Publish after Close = %v, want ErrClosed", err)
	}
}

// evens is a recorder that wants only even cookies.
type evens struct{ recorder }

func (*evens) Wants(e *event.Event) bool { return e.Cookie%2 == 0 }

// A Selector's queue takes only what it wants: what it turns down is
// neither delivered nor counted, and the other subscribers get everything.
func TestSelectorGetsOnlyWhatItWants(t *testing.T) {
	defer goleak.VerifyNone(t)
	sel, all := &evens{}, &recorder{}
	s := New(nil)
	s.Subscribe("evens", sel, 4) // 4 holds the 4 evens of 0..8, not all 8
	s.Subscribe("all", all, 8)
	publish(t, s, 0, 8)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got, want := sel.got(), []uint64{0, 2, 4, 6}; !equal(got, want) {
		t.Errorf("selector got %v, want %v", got, want)
	}
	if got := all.got(); !equal(got, sequence(0, 8)) {
		t.Errorf("the other subscriber got %v, want 0..7", got)
	}
	for _, st := range s.Stats() {
		if st.Name == "evens" && (st.Delivered != 4 || st.Dropped != 0) {
			t.Errorf("selector's stats %+v, want 4 delivered, 0 dropped", st)
		}
	}
}
