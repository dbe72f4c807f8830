package sink

import (
	"bytes"
	"errors"
	"strings"
	"syscall"
	"testing"

	"github.com/portlife/portlife/internal/encode"
	"github.com/portlife/portlife/internal/event"
)

// Events are buffered until Flush, then appear whole and in order.
func TestWriterBuffersUntilFlush(t *testing.T) {
	tests := []struct {
		name string
		enc  Encoder
	}{
		{"json", &encode.JSON{}},
		{"text", &encode.Text{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			w := NewWriter(&out, tt.enc, 64<<10)
			for c := uint64(1); c <= 3; c++ {
				if err := w.Write(&event.Event{Kind: event.KindOpen, Cookie: c}); err != nil {
					t.Fatal(err)
				}
			}
			if out.Len() != 0 {
				t.Fatalf("%d bytes written before Flush, want them buffered", out.Len())
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
			wantLines := 3
			if tt.name == "text" {
				wantLines++ // the header
			}
			if len(lines) != wantLines {
				t.Fatalf("got %d lines, want %d:\n%s", len(lines), wantLines, out.String())
			}
		})
	}
}

type brokenPipe struct{}

func (brokenPipe) Write([]byte) (int, error) { return 0, syscall.EPIPE }

// A destination that is gone is reported, at the latest by Flush.
func TestWriterReportsErrors(t *testing.T) {
	w := NewWriter(brokenPipe{}, &encode.JSON{}, 4096)
	var err error
	for i := 0; i < 100 && err == nil; i++ { // more than the buffer holds
		err = w.Write(&event.Event{Kind: event.KindClose})
	}
	if !errors.Is(err, syscall.EPIPE) {
		t.Errorf("Write to a broken pipe = %v, want EPIPE once the buffer fills", err)
	}
	if err := w.Flush(); !errors.Is(err, syscall.EPIPE) {
		t.Errorf("Flush = %v, want EPIPE", err)
	}
}
