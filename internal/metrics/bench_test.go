package metrics

import "testing"

// BenchmarkCountsWrite is the metrics consumer's cost per event. Each op
// is one event. It needs a quiet machine.
func BenchmarkCountsWrite(b *testing.B) {
	c := NewCounts()
	evs := events()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		c.Write(&evs[i%len(evs)])
		i++
	}
}
