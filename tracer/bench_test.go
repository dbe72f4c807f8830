package tracer

import "testing"

// BenchmarkDecode is the cost of turning one ring-buffer record into the
// Event the Tracer reuses.
func BenchmarkDecode(b *testing.B) {
	d, err := newDecoder()
	if err != nil {
		b.Fatal(err)
	}
	raw := SampleRecord()
	var ev Event
	b.ReportAllocs()
	for b.Loop() {
		if err := d.decode(raw, &ev); err != nil {
			b.Fatal(err)
		}
	}
}
