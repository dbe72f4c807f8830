package encode

import (
	"testing"
)

// Each benchmark op is one event, so ns/op is the cost per event. The
// encoders append to a reused buffer, as a sink does.

func BenchmarkJSON(b *testing.B) {
	ev := tcpClose()
	var (
		j   JSON
		buf []byte
	)
	b.ReportAllocs()
	for b.Loop() {
		buf = j.Append(buf[:0], &ev)
	}
}

func BenchmarkText(b *testing.B) {
	ev := tcpClose()
	var (
		w   Text
		buf []byte
	)
	b.ReportAllocs()
	for b.Loop() {
		buf = w.Append(buf[:0], &ev)
	}
}
