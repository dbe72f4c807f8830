package tracer

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/portlife/portlife/internal/encode"
	"github.com/portlife/portlife/internal/event"
)

// Any bytes the ring could hold decode without a panic: a record too short
// is refused, any other becomes an event that both encoders write whole,
// as valid JSON on one line and as one line of text, whatever its comm,
// enums or addresses hold. The seeds run in make test; go test -fuzz
// FuzzDecode ./tracer explores further.
func FuzzDecode(f *testing.F) {
	f.Add(sampleRecord())
	f.Add(rawRecord(&portlifeEvent{Kind: kFailed, Family: 6, Comm: [16]int8{'"', '\\', '\n', -1, -61}}))
	f.Add(rawRecord(&portlifeEvent{Kind: 200, Proto: 99, Family: 0, Direction: 9, PidSource: 77, ClosedBy: 5, Flags: 0xff}))
	f.Add([]byte{})
	f.Add(sampleRecord()[:recordSize-1])
	f.Fuzz(func(t *testing.T, raw []byte) {
		d := testDecoder()
		var ev event.Event
		err := d.decode(raw, &ev)
		if (err == nil) != (len(raw) >= recordSize) {
			t.Fatalf("decode of %d bytes: %v; want an error exactly when shorter than %d", len(raw), err, recordSize)
		}
		if err != nil {
			return
		}
		var j encode.JSON
		line := j.Append(nil, &ev)
		if !json.Valid(line) || bytes.Count(line, []byte{'\n'}) != 1 {
			t.Fatalf("JSON is not one valid line: %q", line)
		}
		var txt encode.Text
		out := txt.Append(nil, &ev)
		if n := bytes.Count(out, []byte{'\n'}); n != 2 { // the header, then the event
			t.Fatalf("text is %d lines, want a header and one: %q", n, out)
		}
	})
}
