package tracer

import (
	"context"
	"testing"
	"time"

	"github.com/portlife/portlife/internal/event"
	"github.com/portlife/portlife/internal/kerneltest"
	"go.uber.org/zap"
)

// BenchmarkChurn is the cost of tracing on connection churn, on whichever
// kernel runs it (make test-kernels KERNELS_ARGS="--run '^$' --bench Churn"
// runs it in each kernel of the matrix): loopback TCP connections opened,
// accepted and closed one after another, in rounds that alternate between
// no tracer, the tracer on this kernel's best hooks, and, on a kernel that
// has them, the tracer with every stand-in older kernels need. It reports
// each variant's connections per second relative to no tracer in the same
// run (rate_vs_none); a quiet machine gives the meaningful numbers.
func BenchmarkChurn(b *testing.B) {
	requireRoot(b)
	variants := []struct {
		name   string
		kernel *kernelFeatures
	}{{"best hooks", nil}, {"fallbacks", &everyGap}}
	srv := kerneltest.NewChurnServer(b)
	// round makes n connections and returns how long they took.
	round := func(n int) time.Duration {
		start := time.Now()
		if _, err := srv.Churn(n); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	const perRound, rounds = 500, 4
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			var none, traced time.Duration
			for range b.N {
				for range rounds {
					none += round(perRound)
					cfg := DefaultConfig()
					cfg.Filter = event.Filter{Protos: []event.Proto{event.ProtoTCP}}
					cfg.kernel = v.kernel
					tr := startBenchTracer(b, cfg)
					traced += round(perRound)
					tr()
				}
			}
			b.ReportMetric(none.Seconds()/traced.Seconds(), "rate_vs_none")
			b.ReportMetric(float64(b.N*rounds*perRound)/traced.Seconds(), "conns/s")
		})
	}
}

// discard is an Output that counts and drops events.
type discard struct{ n int }

func (d *discard) Write(*event.Event) error { d.n++; return nil }
func (d *discard) Flush() error             { return nil }

// startBenchTracer loads, attaches and runs a tracer; the function it
// returns stops it, closes it, and fails the benchmark if it lost events.
func startBenchTracer(b *testing.B, cfg Config) func() {
	tr, err := New(cfg, zap.NewNop())
	if err != nil {
		b.Fatalf("starting the tracer: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx, &discard{}) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("Run: %v", err)
		}
		s, err := tr.Stats()
		if err != nil || s.Lost() != 0 {
			b.Errorf("lost events: %+v, %v", s, err)
		}
		if err := tr.Close(); err != nil {
			b.Errorf("Close: %v", err)
		}
	}
}
