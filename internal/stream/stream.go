// Package stream fans the tracer's events out to every consumer. The primary
// output (stdout, by default) runs inline on the reader thread, so when it is
// slow the back-pressure lands in the kernel's ring, where losses are
// counted. Every other consumer (a network sink, the store, accounting,
// metrics) gets a bounded queue and a goroutine of its own: when it falls
// behind it loses events from its own queue only, each one counted, and the
// reader thread never waits for it.
package stream

import (
	"errors"
	"sync"
	"sync/atomic"

	"github.com/portlife/portlife/internal/event"
)

// Consumer receives events in order. The Event passed to Write is reused
// after Write returns: a consumer that keeps one must copy it. Flush hands
// on whatever the consumer buffers.
type Consumer interface {
	Write(*event.Event) error
	Flush() error
}

// Selector is a Consumer that takes only some events. Wants runs on the
// reader thread before an event is copied into the consumer's queue, so it
// must be a few comparisons; an event it turns down is neither queued nor
// counted for that consumer.
type Selector interface {
	Wants(*event.Event) bool
}

// Stream delivers each event to the primary consumer inline and to every
// subscriber through its queue. Write, Flush and Close are for the reader;
// Publish and Stats may be called from anywhere, at any time.
type Stream struct {
	primary Consumer
	subs    []*subscriber
	wg      sync.WaitGroup

	// mu orders the reader's writes with events that consumers publish.
	// It is uncontended but for a publish, which is rare (a pressure
	// crossing, a summary per interval).
	mu     sync.Mutex
	closed bool
}

// ErrClosed is what Publish returns once the stream is closed: the event
// was not delivered, and the publisher counts it as lost.
var ErrClosed = errors.New("stream closed")

// New returns a stream whose primary consumer is primary (nil for none).
func New(primary Consumer) *Stream { return &Stream{primary: primary} }

// subscriber is one queued consumer and its counters.
type subscriber struct {
	name  string
	c     Consumer
	sel   Selector         // nil: every event
	queue chan event.Event // bounded: events are copied in, never allocated
	flush chan struct{}    // a flush request, coalesced
	// ev holds the event being written. A local would escape to the heap
	// (the consumer is an interface), one allocation per event.
	ev event.Event

	delivered atomic.Uint64
	dropped   atomic.Uint64
	failed    atomic.Uint64
	lastErr   atomic.Pointer[error]
}

// Subscribe adds a consumer behind a queue of capacity events and starts its
// goroutine, which Close joins. Subscribe before the first Write.
func (s *Stream) Subscribe(name string, c Consumer, capacity int) {
	sel, _ := c.(Selector)
	sub := &subscriber{
		name:  name,
		c:     c,
		sel:   sel,
		queue: make(chan event.Event, max(capacity, 1)),
		flush: make(chan struct{}, 1),
	}
	s.subs = append(s.subs, sub)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		sub.run()
	}()
}

// run delivers queued events until the queue is closed and empty.
func (sub *subscriber) run() {
	var ok bool
	for {
		select {
		case sub.ev, ok = <-sub.queue:
			if !ok {
				sub.check(sub.c.Flush())
				return
			}
			sub.deliver()
		case <-sub.flush:
			// What was queued before the request goes out with it.
			for n := len(sub.queue); n > 0; n-- {
				sub.ev = <-sub.queue
				sub.deliver()
			}
			sub.check(sub.c.Flush())
		}
	}
}

func (sub *subscriber) deliver() {
	sub.check(sub.c.Write(&sub.ev))
	sub.delivered.Add(1)
}

// check counts a consumer's failure. A failing consumer keeps getting events:
// a sink that reconnects may succeed with the next one.
func (sub *subscriber) check(err error) {
	if err != nil {
		sub.failed.Add(1)
		last := err // a copy, so that only a failure allocates
		sub.lastErr.Store(&last)
	}
}

// Write delivers e to the primary consumer, then offers a copy to every
// subscriber; a full queue drops it for that subscriber alone, and counts it.
// An error is the primary consumer's: the output is gone.
func (s *Stream) Write(e *event.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.write(e)
}

// Publish is Write for an event a consumer derived from the stream, such as
// a pressure report or a summary, from the consumer's own goroutine. Every
// subscriber gets it, the publisher included, which ignores its own kinds.
// After Close it returns ErrClosed.
func (s *Stream) Publish(e *event.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	return s.write(e)
}

func (s *Stream) write(e *event.Event) error {
	for _, sub := range s.subs {
		if sub.sel != nil && !sub.sel.Wants(e) {
			continue
		}
		select {
		case sub.queue <- *e:
		default:
			sub.dropped.Add(1)
		}
	}
	if s.primary == nil {
		return nil
	}
	return s.primary.Write(e)
}

// Flush flushes the primary consumer, and asks each subscriber to flush
// once it has written what is queued before this call.
func (s *Stream) Flush() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sub := range s.subs {
		select {
		case sub.flush <- struct{}{}:
		default: // one is pending already
		}
	}
	if s.primary == nil {
		return nil
	}
	return s.primary.Flush()
}

// Close ends the stream: every subscriber writes what its queue holds,
// flushes, and its goroutine ends before Close returns. Nothing is
// delivered after that. The primary consumer is flushed first.
func (s *Stream) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	var err error
	if s.primary != nil {
		err = s.primary.Flush()
	}
	// Unlocked while the queues drain: a subscriber that publishes as it
	// drains gets ErrClosed rather than waiting for the lock forever.
	s.mu.Unlock()
	for _, sub := range s.subs {
		close(sub.queue)
	}
	s.wg.Wait()
	return err
}

// ConsumerStats counts what one subscriber got and lost.
type ConsumerStats struct {
	Name      string
	Delivered uint64 // events written to the consumer
	Dropped   uint64 // events lost because its queue was full
	Failed    uint64 // writes and flushes that returned an error
	LastError error  // the latest of those errors, if any
}

// Stats reads every subscriber's counters. It is safe to call concurrently
// with Write.
func (s *Stream) Stats() []ConsumerStats {
	out := make([]ConsumerStats, len(s.subs))
	for i, sub := range s.subs {
		out[i] = ConsumerStats{
			Name:      sub.name,
			Delivered: sub.delivered.Load(),
			Dropped:   sub.dropped.Load(),
			Failed:    sub.failed.Load(),
		}
		if p := sub.lastErr.Load(); p != nil {
			out[i].LastError = *p
		}
	}
	return out
}

// Dropped is every event any subscriber lost to a full queue.
func (s *Stream) Dropped() uint64 {
	var n uint64
	for _, sub := range s.subs {
		n += sub.dropped.Load()
	}
	return n
}
