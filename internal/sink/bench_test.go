package sink

import (
	"path/filepath"
	"testing"

	"github.com/portlife/portlife/internal/sinktest"
)

// The cost of one event in each sink, on the sink's goroutine: encoding,
// queueing and, for the file, writing. Run them on a quiet machine
// (make bench-go); allocs/op must stay 0.

func BenchmarkFileSink(b *testing.B) {
	spec, err := ParseURL("file:" + filepath.Join(b.TempDir(), "events.json") + "?max_size=64MiB&keep=1&fsync=never")
	if err != nil {
		b.Fatal(err)
	}
	s, err := openFile(spec)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	e := testEvent(1)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		s.Write(e)
		if i%1000 == 999 {
			s.Flush()
		}
	}
}

func BenchmarkSyslogAppend(b *testing.B) {
	s, e := NewSyslog(3), testEvent(1)
	buf := s.Append(nil, e)
	b.ReportAllocs()
	for b.Loop() {
		buf = s.Append(buf[:0], e)
	}
	b.SetBytes(int64(len(buf)))
}

// BenchmarkRecord is the encoding of one event into the record each network
// sink sends (NDJSON; a syslog message; a syslog message framed by octet
// counting), without the queue or the network: allocs/op must be 0.
func BenchmarkRecord(b *testing.B) {
	for _, url := range recordURLs {
		spec, err := ParseURL(url)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(spec.Scheme, func(b *testing.B) {
			format, e := recordFormat(spec), testEvent(1)
			buf := format(nil, e)
			b.ReportAllocs()
			for b.Loop() {
				buf = format(buf[:0], e)
			}
			b.SetBytes(int64(len(buf)))
		})
	}
}

// BenchmarkTCPSink is the throughput to a local TCP receiver: Write queues,
// the sender writes; Close waits until the receiver's kernel acknowledged
// everything.
func BenchmarkTCPSink(b *testing.B) {
	for _, scheme := range []string{"tcp", "syslog+tcp"} {
		b.Run(scheme, func(b *testing.B) {
			r := sinktest.Listen(b, nil, false)
			spec, err := ParseURL(scheme + "://" + r.Addr() + "?queue=256MiB")
			if err != nil {
				b.Fatal(err)
			}
			s, err := openNet(spec)
			if err != nil {
				b.Fatal(err)
			}
			e := testEvent(1)
			b.ReportAllocs()
			for b.Loop() {
				s.Write(e)
			}
			s.Close()
			if st := s.Stats(); st.Lost() != 0 {
				b.Fatalf("lost %d", st.Lost())
			}
		})
	}
}
