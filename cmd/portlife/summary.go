package main

import (
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/portlife/portlife/internal/event"
	"github.com/portlife/portlife/internal/ports"
	"github.com/portlife/portlife/internal/stream"
	"github.com/portlife/portlife/internal/summary"
)

// summaryOptions are the --summary flags of trace.
type summaryOptions struct {
	interval time.Duration // 0: no summaries
	only     bool
	top      int
}

// The summarizer's queue: it only counts, so it keeps up with the reader,
// but a burst must not cost it events (each costs an exact count).
const summaryQueue = 32 << 10

func addSummaryFlags(fs *pflag.FlagSet, o *summaryOptions) {
	fs.Var(summaryIntervalValue{&o.interval}, "summary", "add a summary event per (process, destination) every interval, e.g. 10s")
	fs.BoolVar(&o.only, "summary-only", false, "print summaries only, no per-connection events (every 10s unless --summary says otherwise)")
	o.top = summary.DefaultTopN
	fs.Var(positiveValue{&o.top}, "summary-top", "keys with a summary row of their own each interval, by churn; the rest add up in an other row")
}

// check fills in what the flags imply.
func (o *summaryOptions) check() {
	if o.only && o.interval == 0 {
		o.interval = 10 * time.Second
	}
}

// usageOf is the summaries' view of accounting; nil when it is off.
func usageOf(acct *ports.Accountant) func(uint32, int, event.Proto, bool, netip.Addr, netip.AddrPort) (event.KeyUsage, bool) {
	if acct == nil {
		return nil
	}
	return acct.UsageOf
}

// summaries is a running summarizer.
type summaries struct {
	s    *summary.Summarizer
	stop chan struct{}
	done chan struct{}
}

// primary is what stdout gets: with --summary-only, the summaries alone.
func (o *summaryOptions) primary(c stream.Consumer) stream.Consumer {
	if o.only {
		return summariesOnly{c}
	}
	return c
}

// start subscribes a summarizer to s, if summaries are on. Its outbound
// rows carry their port key's pressure from acct (nil: accounting is off).
func (o *summaryOptions) start(s *stream.Stream, acct *ports.Accountant) *summaries {
	if o.interval == 0 {
		return nil
	}
	sum := &summaries{
		s:    summary.New(summary.Config{Interval: o.interval, TopN: o.top, Usage: usageOf(acct)}, s),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	s.Subscribe("summary", sum.s, summaryQueue)
	go func() {
		defer close(sum.done)
		sum.s.Run(sum.stop)
	}()
	return sum
}

// finish publishes the last, partial interval once the tracer has stopped,
// before the stream closes; what could not be published is reported.
func (sum *summaries) finish(s *stream.Stream, log *zap.Logger) {
	if sum == nil {
		return
	}
	close(sum.stop)
	<-sum.done
	if !sum.s.Finish(s.Flush, 10*time.Second) {
		log.Warn("the last summary interval was not published in time")
	}
}

// report logs, once the stream has closed, the summaries published and
// any that were lost.
func (sum *summaries) report(log *zap.Logger) {
	if sum == nil {
		return
	}
	st := sum.s.Stats()
	if st.Lost > 0 {
		log.Warn("summary events lost: the stream had closed", zap.Uint64("lost", st.Lost), zap.Uint64("published", st.Published))
		return
	}
	log.Info("summaries", zap.Uint64("published", st.Published))
}

// summariesOnly passes summary events on and drops the per-connection ones.
type summariesOnly struct{ next stream.Consumer }

func (c summariesOnly) Write(e *event.Event) error {
	if e.Kind != event.KindSummary {
		return nil
	}
	return c.next.Write(e)
}

func (c summariesOnly) Flush() error { return c.next.Flush() }

// summaryIntervalValue is a positive duration, at least 100ms.
type summaryIntervalValue struct{ p *time.Duration }

func (v summaryIntervalValue) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil || d < 100*time.Millisecond {
		return fmt.Errorf("%q: want an interval of 100ms or more, such as 10s", s)
	}
	*v.p = d
	return nil
}

func (v summaryIntervalValue) String() string {
	if *v.p == 0 {
		return ""
	}
	return v.p.String()
}

func (v summaryIntervalValue) Type() string { return "interval" }

// positiveValue is an integer of 1 or more.
type positiveValue struct{ p *int }

func (v positiveValue) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return fmt.Errorf("%q: want a number of 1 or more", s)
	}
	*v.p = n
	return nil
}

func (v positiveValue) String() string { return strconv.Itoa(*v.p) }
func (v positiveValue) Type() string   { return "n" }
