// Package sink delivers encoded events to where they are kept: today a
// buffered writer for stdout. A sink owns its buffering and flushing; the
// encoding comes from internal/encode, and the stream decides whether a sink
// runs inline on the reader thread (the primary output) or behind a queue of
// its own.
package sink

import (
	"bufio"
	"io"

	"github.com/portlife/portlife/internal/event"
)

// Encoder appends one event's bytes to a buffer (internal/encode).
type Encoder interface {
	Append(dst []byte, e *event.Event) []byte
}

// Writer writes encoded events to an io.Writer through a buffer, and hands
// them on at Flush or when the buffer fills. One event's bytes are written
// whole, or the error is returned.
type Writer struct {
	w   *bufio.Writer
	enc Encoder
	buf []byte // one event, reused
}

// NewWriter buffers up to bufSize bytes of events for w.
func NewWriter(w io.Writer, enc Encoder, bufSize int) *Writer {
	return &Writer{w: bufio.NewWriterSize(w, bufSize), enc: enc, buf: make([]byte, 0, 1024)}
}

func (s *Writer) Write(e *event.Event) error {
	s.buf = s.enc.Append(s.buf[:0], e)
	_, err := s.w.Write(s.buf)
	return err
}

func (s *Writer) Flush() error { return s.w.Flush() }
