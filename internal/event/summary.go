package event

import "time"

// Summary is what a summary event (KindSummary) says about one key, a
// (process, destination) pair, over one interval: the event's Start to its
// Time. The key is in the event's own fields: Comm, Unit, ContainerID,
// Proto and Direction; the destination is Remote for outbound traffic and
// Local's port (with an unspecified address) for inbound. The Other row adds
// up every key beyond the top N, so the rows of one interval sum to exactly
// what was seen.
type Summary struct {
	Other bool   // the row that adds up the keys beyond the top N
	Keys  uint32 // how many keys the row adds up: 1, or more for Other

	Opened uint64 // open events
	Closed uint64 // close events
	Failed uint64 // connect_failed and bind_failed events
	// Failures counts Failed by reason (Event.Reason), most first.
	Failures []ReasonCount

	// Lifetimes counts the closes whose start was seen; the percentiles and
	// UnderOneSecond are over these.
	Lifetimes      uint64
	P50, P90, P99  time.Duration // within LifetimeError of the true value
	UnderOneSecond uint64        // lifetimes shorter than 1 s

	TxBytes, RxBytes uint64
	TimeWait         uint64 // TCP closes that left the port in TIME_WAIT

	// Ports is the port pressure, at the end of the interval, of the port
	// key the row's connections take their local ports from (port
	// accounting's): outbound rows only, and only while accounting tracks
	// that key; else its Mechanism is 0.
	Ports KeyUsage
}

// KeyUsage is one port key's usage now: U, C and U/C, as a pressure event
// says them.
type KeyUsage struct {
	Mechanism Mechanism // 0: no key known
	Used      int
	Capacity  int
	Ratio     float64
	TimeWait  int // of Used, the ports waiting in TIME_WAIT
}

// ReasonCount is how many failures had one reason.
type ReasonCount struct {
	Reason string
	Count  uint64
}

// Churn is what ranks keys: connections opened, closed and failed.
func (s *Summary) Churn() uint64 { return s.Opened + s.Closed + s.Failed }

// LifetimeError is the largest relative error of Summary's percentiles, for
// lifetimes of 1 µs to a day: the sketch that estimates them (internal/summary)
// keeps logarithmic buckets this wide.
const LifetimeError = 0.02
