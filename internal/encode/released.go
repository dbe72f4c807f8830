package encode

import (
	"github.com/portlife/portlife/internal/event"
)

// appendReleasedJSON writes the fields of a released event: how long the
// port stayed in TIME_WAIT after its close, and how the TIME_WAIT ended.
func appendReleasedJSON(b []byte, e *event.Event) []byte {
	if !e.Start.IsZero() {
		b = appendMillis(b, `,"time_wait_ms":`, e.Duration())
	}
	b = appendString(b, `,"release":"`, e.Release.String())
	return append(b, '"')
}

// appendReleasedNotes writes a released event's note column.
func appendReleasedNotes(b []byte, e *event.Event) []byte {
	return append(append(b, "release="...), e.Release.String()...)
}
