package output

import (
	"io"
	"testing"

	"github.com/portlife/portlife/tracer"
)

// Each benchmark op is one event, so ns/op is the cost per event. The
// encoders write to io.Discard through their own buffers, as they would to a
// pipe or a terminal.

func BenchmarkJSON(b *testing.B) {
	ev := tcpClose()
	j := NewJSON(io.Discard)
	b.ReportAllocs()
	for b.Loop() {
		if err := j.Write(&ev); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkText(b *testing.B) {
	ev := tcpClose()
	w := NewText(io.Discard)
	b.ReportAllocs()
	for b.Loop() {
		if err := w.Write(&ev); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRecordToJSON is the Tracer's hot path after the ring buffer read:
// a raw kernel record is decoded into a reused Event and written as JSON.
func BenchmarkRecordToJSON(b *testing.B) {
	d, err := tracer.NewDecoder()
	if err != nil {
		b.Fatal(err)
	}
	raw := tracer.SampleRecord()
	j := NewJSON(io.Discard)
	var ev tracer.Event
	b.ReportAllocs()
	for b.Loop() {
		if err := d.Decode(raw, &ev); err != nil {
			b.Fatal(err)
		}
		if err := j.Write(&ev); err != nil {
			b.Fatal(err)
		}
	}
}
