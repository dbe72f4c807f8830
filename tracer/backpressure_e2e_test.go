package tracer

import (
	"context"
	"os"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/portlife/portlife/internal/event"
)

// blockingSink holds the first Write until release is closed, as a stuck
// disk or sink downstream would.
type blockingSink struct {
	*collector
	release chan struct{}
}

func (b *blockingSink) Write(e *event.Event) error {
	<-b.release
	return b.collector.Write(e)
}

// When user space falls behind, the ring buffer overflows, and every event
// that did not fit is counted: delivered plus lost is exactly what the
// connections produced.
func TestBackPressureIsCounted(t *testing.T) {
	requireRoot(t)
	const conns = 200 // 800 events of 152 bytes: far more than a 4KiB ring holds
	cfg := DefaultConfig()
	cfg.Filter = event.Filter{PID: uint32(os.Getpid()), Protos: []event.Proto{event.ProtoTCP}}
	cfg.RingBufferSize = 4096
	cfg.FlushInterval = 10 * time.Millisecond
	tr, err := New(cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	sink := &blockingSink{collector: newCollector(), release: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx, sink) }()

	for i := 0; i < conns; i++ {
		p := connect(t, tcpFamilies[0])
		closeFirst(t, p.client, p.server, false)
	}
	time.Sleep(100 * time.Millisecond) // the last destroy events reach the ring
	close(sink.release)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	s, err := tr.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if s.RingbufFull == 0 {
		t.Fatalf("no event was lost with a 4KiB ring and a stuck sink: the test proves nothing (%+v)", s)
	}
	if got := s.Events + s.RingbufFull; got != 4*conns || s.Events != uint64(len(sink.events)) {
		t.Errorf("delivered %d + lost %d = %d, want the %d events of %d connections (sink saw %d)",
			s.Events, s.RingbufFull, got, 4*conns, conns, len(sink.events))
	}
}
