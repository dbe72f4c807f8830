package store

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/portlife/portlife/internal/event"
)

// The store's benchmarks need a quiet machine (make bench-store): they
// measure the disk and the CPU, which other work on the host skews.

// churnEvent is the i-th lifetime of a synthetic churn: 64 processes
// connecting from ephemeral ports to 256 servers, each lifetime a close.
func churnEvent(e *event.Event, i int, at time.Time) {
	*e = tcp(event.KindClose, uint64(i+1), uint16(32768+i%28232), at.Add(-40*time.Millisecond), at, "proc"+strconv.Itoa(i%64))
	e.Remote = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i / 256 % 256), byte(i % 256)}), 443)
	e.PID = uint32(1000 + i%64)
	e.TxBytes, e.RxBytes, e.TxPackets, e.RxPackets = 517, 4096, 6, 7
}

// BenchmarkWrite is the rows per second one writer sustains through its
// batches, and the bytes each lifetime costs on disk.
func BenchmarkWrite(b *testing.B) {
	cfg := DefaultConfig(filepath.Join(b.TempDir(), "history.db"))
	w, err := Open(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	var e event.Event
	b.ResetTimer()
	for i := range b.N {
		churnEvent(&e, i, t0.Add(time.Duration(i)*time.Microsecond))
		if err := w.Write(&e); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rows/s")
	fi, err := os.Stat(cfg.Path)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(fi.Size())/float64(b.N), "bytes/lifetime")
}

// BenchmarkQueryPort is `portlife query --port P --at T` over a store of
// PORTLIFE_BENCH_ROWS lifetimes (10 million by default), built once in
// PORTLIFE_BENCH_DB if set (kept for the next run), else in a temporary
// directory. The target is under 100 ms a query.
func BenchmarkQueryPort(b *testing.B) {
	rows := 10_000_000
	if s := os.Getenv("PORTLIFE_BENCH_ROWS"); s != "" {
		var err error
		if rows, err = strconv.Atoi(s); err != nil {
			b.Fatal(err)
		}
	}
	path := os.Getenv("PORTLIFE_BENCH_DB")
	if path == "" {
		path = filepath.Join(b.TempDir(), "history.db")
	}
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	if _, err := os.Stat(path); err != nil {
		cfg := DefaultConfig(path)
		cfg.MaxSize = 1 << 40
		cfg.MaxAge = 100 * 365 * 24 * time.Hour
		cfg.BatchSize = 65536
		cfg.Now = func() time.Time { return t0 }
		w, err := Open(context.Background(), cfg)
		if err != nil {
			b.Fatal(err)
		}
		var e event.Event
		for i := range rows {
			churnEvent(&e, i, t0.Add(time.Duration(i)*time.Millisecond))
			if err := w.Write(&e); err != nil {
				b.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
	}
	r, err := OpenReader(context.Background(), path)
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	var found int
	b.ResetTimer()
	for i := range b.N {
		// A port and a moment in the middle of the churn.
		at := t0.Add(time.Duration(rows/2+i*7919%(rows/2)) * time.Millisecond)
		port := uint16(32768 + (rows/2+i*7919%(rows/2))%28232)
		q := Query{Ports: []event.PortRange{{Lo: port, Hi: port}}, Since: at, Until: at}
		n, err := r.Lifetimes(context.Background(), &q, func(*event.Event) error { return nil })
		if err != nil {
			b.Fatal(err)
		}
		found += n
	}
	b.StopTimer()
	if found == 0 {
		b.Fatal("no query found its lifetime: the benchmark measures nothing")
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/query")
}
