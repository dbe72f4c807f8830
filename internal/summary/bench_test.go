package summary

import (
	"fmt"
	"testing"
	"time"

	"github.com/portlife/portlife/internal/event"
)

// BenchmarkWrite is the summarizer's cost per event (open, close, refused)
// on a host whose events spread over 100 keys. Each op is one event. It
// needs a quiet machine.
func BenchmarkWrite(b *testing.B) {
	s := New(Config{Interval: time.Hour}, &published{})
	var evs []event.Event
	for i := range 100 {
		dest := fmt.Sprintf("10.0.0.%d:443", i)
		evs = append(evs, conn("web", dest, time.Duration(i)*time.Millisecond, false)...)
		evs = append(evs, conn("web", dest, 0, true)...)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		s.Write(&evs[i%len(evs)])
		i++
	}
}
