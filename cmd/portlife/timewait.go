package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/portlife/portlife/internal/event"
	"github.com/portlife/portlife/internal/stream"
	"github.com/portlife/portlife/internal/timewait"
)

// timeWaitOptions turn the released events on, and tune their tracker.
// They are off by default: each one is a second line for every TCP close
// that left a TIME_WAIT, and watching TIME_WAITs costs CPU in proportion
// to how many there are, while port accounting and the store already end
// a TIME_WAIT at its fixed 60 s without them.
type timeWaitOptions struct {
	on  bool
	cfg timewait.Config
}

func addTimeWaitFlags(fs *pflag.FlagSet, o *timeWaitOptions) {
	o.cfg = timewait.DefaultConfig()
	fs.BoolVar(&o.on, "released", false, "report when a closed TCP connection's TIME_WAIT ends and its port is free (released events)")
	fs.Var(twIntervalValue{&o.cfg.Interval}, "released-interval", "how often TIME_WAIT sockets are swept for released events; a release's time is off by at most about half of this")
	fs.Var(countValue{&o.cfg.Max, 1 << 24}, "released-max", "most TIME_WAITs watched at once for released events; closes beyond it are counted as untracked")
}

// twIntervalValue is a sweep interval: 100ms to 10s.
type twIntervalValue struct{ p *time.Duration }

func (v twIntervalValue) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration such as 1s", s)
	}
	if d < 100*time.Millisecond || d > 10*time.Second {
		return fmt.Errorf("%v: want 100ms to 10s", d)
	}
	*v.p = d
	return nil
}

func (v twIntervalValue) String() string { return v.p.String() }
func (v twIntervalValue) Type() string   { return "duration" }

// runs says released events come: asked for, and the trace sees TCP closes.
func (o *timeWaitOptions) runs(f *event.Filter) bool {
	return o.on && f.WantsProto(event.ProtoTCP) && (len(f.Kinds) == 0 || slices.Contains(f.Kinds, event.KindClose))
}

// startTimeWait subscribes the TIME_WAIT tracker to s and runs it until
// ctx is done, if the trace can see closes into TIME_WAIT; nil otherwise.
func startTimeWait(ctx context.Context, o timeWaitOptions, f *event.Filter, s *stream.Stream, log *zap.Logger, wg *sync.WaitGroup) *timewait.Tracker {
	switch {
	case !o.on:
		return nil
	case !o.runs(f):
		log.Debug("no released events: the trace has no TCP close events")
		return nil
	}
	tw := timewait.New(o.cfg, s, log)
	// The queue absorbs the closes that arrive while a sweep holds the
	// tracker (milliseconds, even with 100k TIME_WAITs).
	s.Subscribe("timewait", tw, 8192)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := tw.Run(ctx); err != nil {
			log.Warn("the TIME_WAIT tracker stopped", zap.Error(err))
		}
	}()
	return tw
}

// timeWaitStats logs the tracker's counters in `tracing stopped`.
type timeWaitStats timewait.Stats

func (s timeWaitStats) MarshalLogObject(o zapcore.ObjectEncoder) error {
	o.AddUint64("tracked", s.Tracked)
	o.AddUint64("expired", s.Expired)
	o.AddUint64("reused", s.Reused)
	o.AddUint64("killed", s.Killed)
	o.AddUint64("netns_gone", s.NetnsGone)
	o.AddUint64("overflow", s.Overflow)
	o.AddUint64("pending", s.Pending)
	o.AddUint64("untracked", s.Untracked)
	o.AddUint64("unobservable", s.Unobservable)
	o.AddUint64("unpublished", s.Unpublished)
	o.AddUint64("sweeps", s.Sweeps)
	o.AddUint64("sweep_errors", s.SweepErrors)
	o.AddUint64("sweeps_stretched", s.Stretched)
	o.AddDuration("sweep_time", s.SweepTime)
	return nil
}
