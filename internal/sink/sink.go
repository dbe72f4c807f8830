package sink

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"github.com/portlife/portlife/internal/event"
)

// Sink is a destination chosen with --sink: a stream consumer (Write,
// Flush, in order, from one goroutine) that owns its buffering, its
// connection and its counters. Close ends it after the stream has handed
// it its last event; Stats may be read from any goroutine at any time.
type Sink interface {
	Write(*event.Event) error
	Flush() error
	Close() error
	Name() string
	Stats() Stats
	// QueueEvents is the capacity of the stream queue in front of the
	// sink, in events.
	QueueEvents() int
}

// DropReason is why a sink lost an event it was handed.
type DropReason int

const (
	// DropQueueFull: its memory queue was full (the receiver was down or
	// slower than the events, for longer than the queue holds).
	DropQueueFull DropReason = iota
	// DropSendFailed: a datagram the transport refused, or a record cut
	// by a failed write that the sink did not send again.
	DropSendFailed
	// DropDiskFull: the file's filesystem had no space (ENOSPC, EDQUOT).
	DropDiskFull
	// DropWriteFailed: any other failed write to the file.
	DropWriteFailed
	// DropShutdown: still queued when the drain deadline passed at exit.
	DropShutdown
	numDropReasons
)

var dropNames = [numDropReasons]string{"queue_full", "send_failed", "disk_full", "write_failed", "shutdown"}

func (r DropReason) String() string { return dropNames[r] }

// Stats counts one sink's deliveries and losses.
type Stats struct {
	Name       string
	Sent       uint64                 // events handed whole to the transport (the kernel) or the file
	Queued     uint64                 // events waiting in the sink's memory queue now
	Dropped    [numDropReasons]uint64 // events lost, by reason
	Reconnects uint64                 // connections made again after one was lost or never made
	LastError  error
}

// Lost is every event the sink lost, whatever the reason.
func (s Stats) Lost() uint64 {
	var n uint64
	for _, d := range s.Dropped {
		n += d
	}
	return n
}

// DropReasons lists the reasons, in the order of Stats.Dropped.
func DropReasons() []DropReason {
	r := make([]DropReason, numDropReasons)
	for i := range r {
		r[i] = DropReason(i)
	}
	return r
}

// counters are a sink's Stats, written by its goroutines and read by Stats.
type counters struct {
	sent       atomic.Uint64
	queued     atomic.Int64
	dropped    [numDropReasons]atomic.Uint64
	reconnects atomic.Uint64
	lastErr    atomic.Pointer[error]
}

func (c *counters) drop(r DropReason, n int, err error) {
	c.dropped[r].Add(uint64(n))
	if err != nil {
		c.setErr(err)
	}
}

func (c *counters) setErr(err error) {
	last := err // only a failure allocates
	c.lastErr.Store(&last)
}

func (c *counters) stats(name string) Stats {
	s := Stats{Name: name, Sent: c.sent.Load(), Queued: uint64(max(c.queued.Load(), 0)), Reconnects: c.reconnects.Load()}
	for i := range s.Dropped {
		s.Dropped[i] = c.dropped[i].Load()
	}
	if p := c.lastErr.Load(); p != nil {
		s.LastError = *p
	}
	return s
}

// eventSize is what one event costs in a stream queue.
const eventSize = int(unsafe.Sizeof(event.Event{}))

// Open starts the sink spec describes: a file is opened now, a network
// sink connects in the background (and reconnects) so that a receiver that
// is down at start costs events, counted, not the run.
func Open(spec Spec) (Sink, error) {
	switch {
	case spec.Scheme == "file":
		return openFile(spec)
	case spec.Scheme == "otlp+http" || spec.Scheme == "otlp+https":
		return openOTLP(spec)
	case spec.Networked():
		return openNet(spec)
	}
	return nil, fmt.Errorf("sink %s: not opened by sink.Open", spec.Name())
}
