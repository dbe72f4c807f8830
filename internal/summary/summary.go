// Package summary aggregates the event stream into summary events: one per
// (process, destination) and interval, with counts, failures by reason,
// lifetime percentiles, bytes and TIME_WAIT. It is a stream subscriber, and
// publishes its summaries back into the stream (stream.Publish), so every
// output and consumer gets them like any event. Each interval it keeps the
// top N keys by churn and adds up the rest in an `other` row, so the rows
// of an interval always sum to exactly what was seen.
package summary

import (
	"cmp"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/portlife/portlife/internal/event"
)

// Config says how often and how much to summarize.
type Config struct {
	Interval time.Duration
	// TopN is how many keys get a row of their own each interval; the rest
	// share the `other` row.
	TopN int
	// MaxKeys bounds the keys tracked in one interval (memory: a few KiB a
	// key). Events of keys beyond it go to the `other` row at once.
	MaxKeys int
	// Key groups events into rows; nil is KeyOf, (process, destination).
	// ProcessKey and DestinationKey group by one side alone, as top does.
	Key func(*event.Event) Key
	// Usage reads the port key an outbound connection takes its port from
	// (port accounting's ports.Accountant.UsageOf); each outbound row
	// carries it, as it stands when the interval ends. nil: none.
	Usage func(netns uint32, family int, proto event.Proto, bindBeforeConnect bool, local netip.Addr, remote netip.AddrPort) (event.KeyUsage, bool)
}

// Defaults for Config.
const (
	DefaultTopN    = 20
	DefaultMaxKeys = 4096
)

// Publisher takes the summary events: the stream.
type Publisher interface {
	Publish(*event.Event) error
}

// IntervalReader is a Publisher told when an interval's rows are all out
// (top redraws then).
type IntervalReader interface {
	EndInterval(end time.Time)
}

// Key is what a summary row is about: a process (its name and workload)
// and a destination: the remote end for outbound traffic, the local port
// for inbound.
type Key struct {
	Comm        event.Comm
	Unit        string
	ContainerID string
	Proto       event.Proto
	Direction   event.Direction
	Dest        netip.AddrPort
}

// KeyOf is the key of e.
func KeyOf(e *event.Event) Key {
	k := Key{Comm: e.Comm, Unit: e.Unit, ContainerID: e.ContainerID, Proto: e.Proto, Direction: e.Direction, Dest: e.Remote}
	if e.Direction == event.DirectionInbound {
		// The port served, whichever local address accepted it.
		k.Dest = netip.AddrPortFrom(unspecified(e.Local.Addr()), e.Local.Port())
	}
	return k
}

// ProcessKey groups by process alone: name and workload.
func ProcessKey(e *event.Event) Key {
	return Key{Comm: e.Comm, Unit: e.Unit, ContainerID: e.ContainerID}
}

// DestinationKey groups by destination alone, whichever process.
func DestinationKey(e *event.Event) Key {
	k := KeyOf(e)
	k.Comm, k.Unit, k.ContainerID = event.Comm{}, "", ""
	return k
}

func unspecified(a netip.Addr) netip.Addr {
	if a.Is4() {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}

// entry is one key's figures over the current interval.
type entry struct {
	opened, closed, failed uint64
	failures               []event.ReasonCount
	sketch                 Sketch
	under1s                uint64
	tx, rx                 uint64
	timeWait               uint64
	keys                   uint32
	// The port key of the row's latest outbound event: its namespace, and
	// how and from which local address it took its port.
	netns  uint32
	family int
	local  netip.Addr
	bbc    bool
}

func (x *entry) churn() uint64 { return x.opened + x.closed + x.failed }

func (x *entry) add(e *event.Event) {
	// A connect that failed before choosing a local address keeps the one
	// an earlier connection of the row had.
	if l := e.Local.Addr(); e.Direction == event.DirectionOutbound && (x.family == 0 || l.IsValid() && !l.IsUnspecified()) {
		x.netns, x.family, x.local, x.bbc = e.NetNS, e.Family, l, e.BindBeforeConnect
	}
	switch e.Kind {
	case event.KindOpen:
		x.opened++
	case event.KindClose:
		x.closed++
		x.tx += e.TxBytes
		x.rx += e.RxBytes
		if e.TimeWait {
			x.timeWait++
		}
		if !e.Start.IsZero() {
			d := e.Duration()
			x.sketch.Add(d)
			if d < time.Second {
				x.under1s++
			}
		}
	case event.KindConnectFailed, event.KindBindFailed:
		x.failed++
		x.countFailure(e.Reason(), 1)
	}
}

// countFailure adds n failures of reason; the reasons are a handful of
// constant strings, so a slice searched in order beats a map.
func (x *entry) countFailure(reason string, n uint64) {
	for i := range x.failures {
		if x.failures[i].Reason == reason {
			x.failures[i].Count += n
			return
		}
	}
	x.failures = append(x.failures, event.ReasonCount{Reason: reason, Count: n})
}

func (x *entry) merge(o *entry) {
	x.opened += o.opened
	x.closed += o.closed
	x.failed += o.failed
	for _, f := range o.failures {
		x.countFailure(f.Reason, f.Count)
	}
	x.sketch.Merge(&o.sketch)
	x.under1s += o.under1s
	x.tx += o.tx
	x.rx += o.rx
	x.timeWait += o.timeWait
	x.keys += o.keys
}

func (x *entry) summary(other bool) *event.Summary {
	s := &event.Summary{
		Other:          other,
		Keys:           x.keys,
		Opened:         x.opened,
		Closed:         x.closed,
		Failed:         x.failed,
		Failures:       slices.Clone(x.failures),
		Lifetimes:      x.sketch.Count(),
		P50:            x.sketch.Quantile(0.5),
		P90:            x.sketch.Quantile(0.9),
		P99:            x.sketch.Quantile(0.99),
		UnderOneSecond: x.under1s,
		TxBytes:        x.tx,
		RxBytes:        x.rx,
		TimeWait:       x.timeWait,
	}
	slices.SortStableFunc(s.Failures, func(a, b event.ReasonCount) int { return cmp.Compare(b.Count, a.Count) })
	return s
}

// Summarizer is the stream consumer. Write and Flush come from its stream
// queue's goroutine; Run ticks the intervals; Stats may be read anywhere.
type Summarizer struct {
	cfg Config
	pub Publisher

	mu       sync.Mutex // guards what follows: Write and the tick
	start    time.Time  // of the current interval
	keys     map[Key]*entry
	overflow entry // events of keys beyond MaxKeys
	free     []*entry
	finished bool

	finishing atomic.Bool
	done      chan struct{} // closed once the last interval is published

	published atomic.Uint64 // summary events published
	lost      atomic.Uint64 // summary events the stream refused (closed)
}

// New returns a Summarizer publishing to pub; its first interval starts now.
func New(cfg Config, pub Publisher) *Summarizer {
	if cfg.TopN <= 0 {
		cfg.TopN = DefaultTopN
	}
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = DefaultMaxKeys
	}
	if cfg.Key == nil {
		cfg.Key = KeyOf
	}
	return &Summarizer{cfg: cfg, pub: pub, start: time.Now(), keys: make(map[Key]*entry), done: make(chan struct{})}
}

// Write counts e in its key's row. Summaries (its own, published back to
// it) and other derived kinds are not counted. A known key costs a map
// lookup and no allocation.
func (s *Summarizer) Write(e *event.Event) error {
	switch e.Kind {
	case event.KindOpen, event.KindClose, event.KindConnectFailed, event.KindBindFailed:
	default:
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.cfg.Key(e)
	x, ok := s.keys[k]
	if !ok {
		if len(s.keys) >= s.cfg.MaxKeys {
			s.overflow.add(e)
			return nil
		}
		x = s.newEntry()
		s.keys[k] = x
	}
	x.add(e)
	return nil
}

func (s *Summarizer) newEntry() *entry {
	if n := len(s.free); n > 0 {
		x := s.free[n-1]
		s.free = s.free[:n-1]
		return x
	}
	return &entry{}
}

// Flush is the stream's; once Finish asked for it, it publishes the last,
// partial interval: by then the events queued before Finish are counted.
func (s *Summarizer) Flush() error {
	if s.finishing.Load() {
		s.publish(time.Now(), true)
	}
	return nil
}

// Run publishes a summary every interval until stop is closed.
func (s *Summarizer) Run(stop <-chan struct{}) {
	tick := time.NewTicker(s.cfg.Interval)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-tick.C:
			s.publish(now, false)
		}
	}
}

// Finish publishes the last interval, partial, once every event written
// before it is counted. flush is the stream's Flush, which makes each
// subscriber write what its queue holds and then flush. It waits up to
// timeout, and reports whether the last interval went out.
func (s *Summarizer) Finish(flush func() error, timeout time.Duration) bool {
	s.finishing.Store(true)
	flush()
	select {
	case <-s.done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// publish ends the interval at now: it ranks the keys, publishes the top N
// and the `other` row, and starts the next interval.
func (s *Summarizer) publish(now time.Time, last bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.finished {
		return
	}
	type row struct {
		k Key
		x *entry
	}
	rows := make([]row, 0, len(s.keys))
	for k, x := range s.keys {
		x.keys = 1
		rows = append(rows, row{k, x})
	}
	slices.SortFunc(rows, func(a, b row) int {
		if c := cmp.Compare(b.x.churn(), a.x.churn()); c != 0 {
			return c
		}
		return cmp.Compare(string(a.k.Comm.Bytes()), string(b.k.Comm.Bytes()))
	})
	other := s.overflow
	other.failures = slices.Clone(other.failures)
	other.keys = 0
	if s.overflow.churn() > 0 {
		// The keys beyond MaxKeys are not known one by one: count them as one.
		other.keys = 1
	}
	for i, r := range rows {
		if i < s.cfg.TopN {
			e := event.Event{Kind: event.KindSummary, Time: now, Start: s.start, Summary: r.x.summary(false)}
			r.k.fill(&e)
			if s.cfg.Usage != nil && r.k.Direction == event.DirectionOutbound && r.x.family != 0 {
				e.Summary.Ports, _ = s.cfg.Usage(r.x.netns, r.x.family, r.k.Proto, r.x.bbc, r.x.local, r.k.Dest)
			}
			s.send(&e)
		} else {
			other.merge(r.x)
		}
	}
	if other.churn() > 0 {
		e := event.Event{Kind: event.KindSummary, Time: now, Start: s.start, Comm: otherComm, Summary: other.summary(true)}
		s.send(&e)
	}
	// The next interval reuses the entries: no allocation for the keys
	// that come back.
	for k, x := range s.keys {
		failures := x.failures[:0]
		*x = entry{failures: failures}
		s.free = append(s.free, x)
		delete(s.keys, k)
	}
	s.overflow = entry{}
	s.start = now
	if r, ok := s.pub.(IntervalReader); ok {
		r.EndInterval(now)
	}
	if last {
		s.finished = true
		close(s.done)
	}
}

var otherComm = func() (c event.Comm) { copy(c[:], "other"); return c }()

func (s *Summarizer) send(e *event.Event) {
	if err := s.pub.Publish(e); err != nil {
		s.lost.Add(1)
		return
	}
	s.published.Add(1)
}

func (k Key) fill(e *event.Event) {
	e.Comm, e.Unit, e.ContainerID = k.Comm, k.Unit, k.ContainerID
	e.Proto, e.Direction = k.Proto, k.Direction
	e.Family = 6
	if k.Dest.Addr().Is4() {
		e.Family = 4
	}
	if k.Direction == event.DirectionInbound {
		e.Local = k.Dest
		e.Remote = netip.AddrPortFrom(unspecified(k.Dest.Addr()), 0)
	} else {
		e.Remote = k.Dest
		e.Local = netip.AddrPortFrom(unspecified(k.Dest.Addr()), 0)
	}
}

// Stats counts the summaries published, and those lost because the stream
// had closed.
type Stats struct {
	Published, Lost uint64
}

func (s *Summarizer) Stats() Stats {
	return Stats{Published: s.published.Load(), Lost: s.lost.Load()}
}
