// Package metrics exposes portlife's counters to Prometheus: connections
// opened, closed and failed, lifetime histograms, TIME_WAIT, and every
// event lost, by source. Names follow node_exporter and ebpf_exporter:
// the portlife_ prefix, base units (seconds), _total counters.
//
// Cardinality is bounded by design: labels are the protocol, the direction,
// a failure's reason (a fixed vocabulary and errno names), a loss's source
// and a consumer's name. Never a port, a pid, an address or a 4-tuple.
//
// Counts is a stream subscriber: it counts each event into fixed arrays,
// with no allocation for a label set it has seen. The Collector reads them,
// and the tracer's and the stream's counters, at scrape time, as
// ebpf_exporter and node_exporter do, so nothing is computed between scrapes.
package metrics

import (
	"sync"
	"time"

	"github.com/portlife/portlife/internal/event"
)

// protos and directions index the fixed arrays.
var (
	protos     = [...]event.Proto{event.ProtoTCP, event.ProtoUDP}
	directions = [...]event.Direction{event.DirectionUnknown, event.DirectionOutbound, event.DirectionInbound}
)

func protoIndex(p event.Proto) (int, bool) {
	switch p {
	case event.ProtoTCP:
		return 0, true
	case event.ProtoUDP:
		return 1, true
	}
	return 0, false
}

// LifetimeBuckets are the lifetime histogram's upper bounds, in seconds:
// from a loopback round trip to an hour.
var LifetimeBuckets = []float64{0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600}

type histogram struct {
	counts [17]uint64 // one per bucket, and one beyond the last (+Inf)
	sum    float64
	n      uint64
}

func (h *histogram) observe(d time.Duration) {
	s := d.Seconds()
	i := 0
	for i < len(LifetimeBuckets) && s > LifetimeBuckets[i] {
		i++
	}
	h.counts[i]++
	h.sum += s
	h.n++
}

// failKey is one failed-connections series.
type failKey struct {
	proto, dir int
	reason     string // a constant from Event.Reason: the map never copies it
}

// Counts counts the stream's events. Write is the stream subscriber's;
// snapshot may be taken from any goroutine.
type Counts struct {
	mu       sync.Mutex
	opened   [len(protos)][len(directions)]uint64
	closed   [len(protos)][len(directions)]uint64
	failed   map[failKey]uint64
	lifetime [len(protos)][len(directions)]histogram
	timeWait [len(directions)]uint64 // TCP closes into TIME_WAIT
	released [len(releases)]uint64   // released events, by how
	bbc      [len(directions)]uint64 // TCP opens after bind() to port 0
}

// releases index released: how a TIME_WAIT ended.
var releases = [...]event.Release{event.ReleaseUnknown, event.ReleaseExpired, event.ReleaseReused, event.ReleaseKilled, event.ReleaseOverflow}

// NewCounts returns empty counts.
func NewCounts() *Counts { return &Counts{failed: make(map[failKey]uint64)} }

// Write counts e. Of the derived kinds, released events are counted (by
// how); summaries and pressure events are not: they are not connections.
func (c *Counts) Write(e *event.Event) error {
	p, ok := protoIndex(e.Proto)
	d := int(e.Direction)
	if !ok || d >= len(directions) {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch e.Kind {
	case event.KindOpen:
		c.opened[p][d]++
		if e.BindBeforeConnect {
			c.bbc[d]++
		}
	case event.KindReleased:
		if int(e.Release) < len(releases) {
			c.released[e.Release]++
		}
	case event.KindClose:
		c.closed[p][d]++
		if !e.Start.IsZero() {
			c.lifetime[p][d].observe(e.Duration())
		}
		if e.TimeWait {
			c.timeWait[d]++
		}
	case event.KindConnectFailed, event.KindBindFailed:
		c.failed[failKey{p, d, e.Reason()}]++
	}
	return nil
}

// Flush is the stream's: there is nothing to hand on.
func (c *Counts) Flush() error { return nil }

// snapshot copies the counts, for a scrape.
func (c *Counts) snapshot() (s countsSnapshot) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s.opened, s.closed, s.lifetime, s.timeWait = c.opened, c.closed, c.lifetime, c.timeWait
	s.released, s.bbc = c.released, c.bbc
	s.failed = make(map[failKey]uint64, len(c.failed))
	for k, v := range c.failed {
		s.failed[k] = v
	}
	return s
}

type countsSnapshot struct {
	opened, closed [len(protos)][len(directions)]uint64
	failed         map[failKey]uint64
	lifetime       [len(protos)][len(directions)]histogram
	timeWait       [len(directions)]uint64
	released       [len(releases)]uint64
	bbc            [len(directions)]uint64
}
