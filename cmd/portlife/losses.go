package main

import (
	"context"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/portlife/portlife/internal/stream"
	"github.com/portlife/portlife/internal/timewait"
	"github.com/portlife/portlife/tracer"
)

// losses is the policy for saying what portlife could not deliver: the
// kernel side's drops, by reason, and each queued consumer's, by name. It
// warns while they grow and sums them up at exit. Both sources are safe to
// read while tracing runs.
type losses struct {
	tracer   *tracer.Tracer
	stream   *stream.Stream
	timewait *timewait.Tracker // nil when released events are off
	sinks    *sinks            // nil: none queued
	// counters are what consumers report of their own in `tracing
	// stopped`, besides their losses (the store's rows); nil for none.
	counters func() []zap.Field
}

// timeWaitLost is the releases the TIME_WAIT tracker will not report.
func (l losses) timeWaitLost() uint64 {
	if l.timewait == nil {
		return 0
	}
	return l.timewait.Stats().Lost()
}

// watch warns every interval in which anything was lost, until ctx is done.
func (l losses) watch(ctx context.Context, log *zap.Logger, interval time.Duration) {
	if interval <= 0 {
		return
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var last, lastSkipped uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		s, err := l.tracer.Stats()
		if err != nil {
			log.Warn("reading drop counters", zap.Error(err))
			continue
		}
		total := s.Lost() + l.stream.Dropped() + l.timeWaitLost() + l.sinkStats().lost()
		if total > last || s.SkippedRuns > lastSkipped {
			log.Warn("events lost", append(l.fields(s, total),
				zap.Uint64("lost_since_last", total-last))...)
			last, lastSkipped = total, s.SkippedRuns
		}
	}
}

// summary logs `tracing stopped` with the totals, and a warning with advice
// if anything was lost.
func (l losses) summary(log *zap.Logger) error {
	s, err := l.tracer.Stats()
	ss := l.sinkStats()
	total := s.Lost() + l.stream.Dropped() + l.timeWaitLost() + ss.lost()
	fields := append([]zap.Field{zap.Uint64("events", s.Events)}, l.fields(s, total)...)
	if l.counters != nil {
		fields = append(fields, l.counters()...)
	}
	log.Info("tracing stopped", fields...)
	if s.Lost() > 0 {
		log.Warn("the kernel side could not deliver every event: raise --ring-buffer, or narrow the filters",
			zap.Uint64("lost", s.Lost()))
	}
	if s.SkippedRuns > 0 {
		log.Warn("the kernel skipped runs of portlife's hooks, interrupted on their CPU by another socket's event: closes are still reported, but some events or their details may be missing",
			zap.Uint64("skipped_runs", s.SkippedRuns))
	}
	if d := l.stream.Dropped(); d > 0 {
		log.Warn("a consumer fell behind and lost events from its queue", zap.Uint64("dropped", d))
	}
	if n := l.timeWaitLost(); n > 0 {
		log.Warn("some TIME_WAITs' releases were not reported: raise --released-max if untracked, see the warnings if unobservable",
			zap.Uint64("released_lost", n))
	}
	if n := ss.lost(); n > 0 {
		log.Warn("a sink could not deliver every event: see sinks[].dropped for why, and the README's Sinks section", zap.Uint64("dropped", n))
	}
	return err
}

// fields are the loss counters as log fields: lost is the sum of every
// reason, kernel side and consumers alike; skipped_runs is not a count of
// events (see tracer.Stats).
func (l losses) fields(s tracer.Stats, total uint64) []zap.Field {
	f := []zap.Field{
		zap.Uint64("lost", total),
		zap.Uint64("ringbuf_full", s.RingbufFull),
		zap.Uint64("storage_full", s.StorageFull),
		zap.Uint64("table_full", s.TableFull),
		zap.Uint64("not_adopted", s.NotAdopted),
		zap.Uint64("skipped_runs", s.SkippedRuns),
	}
	if l.timewait != nil {
		f = append(f, zap.Object("released", timeWaitStats(l.timewait.Stats())))
	}
	if cs := l.stream.Stats(); len(cs) > 0 {
		f = append(f, zap.Array("consumers", consumerStats(cs)))
	}
	if ss := l.sinkStats(); len(ss) > 0 {
		f = append(f, zap.Array("sinks", ss))
	}
	return f
}

func (l losses) sinkStats() sinkStats {
	if l.sinks == nil {
		return nil
	}
	return l.sinks.stats()
}

// consumerStats logs each queued consumer as {name, delivered, dropped, failed, error}.
type consumerStats []stream.ConsumerStats

func (cs consumerStats) MarshalLogArray(enc zapcore.ArrayEncoder) error {
	for _, c := range cs {
		enc.AppendObject(zapcore.ObjectMarshalerFunc(func(o zapcore.ObjectEncoder) error {
			o.AddString("name", c.Name)
			o.AddUint64("delivered", c.Delivered)
			o.AddUint64("dropped", c.Dropped)
			o.AddUint64("failed", c.Failed)
			if c.LastError != nil {
				o.AddString("error", c.LastError.Error())
			}
			return nil
		}))
	}
	return nil
}
