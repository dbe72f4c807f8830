package timewait

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/event"
	"github.com/portlife/portlife/internal/kerneltest"
)

// BenchmarkSweep100k measures one sweep with 100k TIME_WAIT sockets in a
// namespace of its own, every one of them watched: the sock_diag dump, the
// matching, and the judging. It needs root, and a quiet machine for
// numbers worth comparing.
func BenchmarkSweep100k(b *testing.B) {
	kerneltest.RequireRoot(b)
	const n = 100_000
	ns := newNetns(b, map[string]string{
		"tcp_max_tw_buckets": "200000",
	})
	ln, port := ns.listenB(b)
	start := time.Now()
	if err := ns.do(func() error {
		// Each from a source address and port of its own: connect()
		// searches no port, so it recycles no TIME_WAIT on the way.
		for i := 0; i < n; i++ {
			// Below the listener's port, from ip_local_port_range.
			src := unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, byte(1 + i/25_000)}, Port: 2_000 + i%25_000}
			if err := closeFirstRaw(ln, port, &src); err != nil {
				return fmt.Errorf("connection %d: %w", i, err)
			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	b.Logf("made %d TIME_WAITs in %v", n, time.Since(start))

	// The closes the Tracker would have learned from the stream, one per
	// TIME_WAIT, by cookie.
	tr := New(Config{Interval: time.Hour, Max: 2 * n}, nopPublisher{}, zap.NewNop())
	h, err := tr.open(ns.ino, 0, 0)
	if err != nil {
		b.Fatal(err)
	}
	var buf []byte
	var found []sighting
	found, buf, err = h.dumpTimeWait(nil, buf)
	h.Close()
	if err != nil {
		b.Fatal(err)
	}
	if len(found) < n {
		b.Fatalf("%d TIME_WAITs in the namespace, want %d", len(found), n)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for _, s := range found {
		tr.track(&event.Event{Kind: event.KindClose, Proto: event.ProtoTCP, TimeWait: true, NetNS: ns.ino, Cookie: s.cookie, Time: time.Now()})
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	heapPerWatch := float64(after.HeapAlloc-before.HeapAlloc) / float64(len(found))
	time.Sleep(10 * time.Millisecond) // the watches predate the first sweep

	var ru0, ru1 unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru0)
	b.ResetTimer()
	for b.Loop() {
		tr.sweep()
	}
	b.StopTimer()
	unix.Getrusage(unix.RUSAGE_SELF, &ru1)
	cpu := time.Duration(ru1.Utime.Nano()-ru0.Utime.Nano()) + time.Duration(ru1.Stime.Nano()-ru0.Stime.Nano())
	b.ReportMetric(heapPerWatch, "heapB/watch")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N)/1000, "cpu-ms/sweep")
	b.ReportMetric(float64(time.Duration(ru1.Stime.Nano()-ru0.Stime.Nano()).Microseconds())/float64(b.N)/1000, "sys-ms/sweep")
	// The dump alone, the kernel's part and the parsing.
	dumpStart := time.Now()
	for range 5 {
		if found, buf, err = h2dump(tr, ns.ino, found[:0], buf); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(time.Since(dumpStart).Microseconds())/5/1000, "dump-ms")
	if s := tr.Stats(); s.Pending != uint64(len(found)) || s.Released() != 0 {
		b.Fatalf("after the sweeps: %+v; want every TIME_WAIT still watched", s)
	}
	tr.closeHandles()
}

// h2dump dumps with the namespace's handle the Tracker holds.
func h2dump(tr *Tracker, ino uint32, out []sighting, buf []byte) ([]sighting, []byte, error) {
	tr.mu.Lock()
	h := tr.ns[ino].h
	tr.mu.Unlock()
	return h.dumpTimeWait(out, buf)
}

type nopPublisher struct{}

func (nopPublisher) Publish(*event.Event) error { return nil }

func (ns *netns) listenB(b *testing.B) (int, uint16) {
	var fd int
	var port uint16
	err := ns.do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			return err
		}
		if err := unix.Listen(fd, 4096); err != nil {
			return err
		}
		sa, err := unix.Getsockname(fd)
		port = uint16(sa.(*unix.SockaddrInet4).Port)
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { unix.Close(fd) })
	return fd, port
}

// closeFirstRaw is closeFirst without a test: our side closes first and
// goes to TIME_WAIT.
func closeFirstRaw(ln int, port uint16, src *unix.SockaddrInet4) error {
	c, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(c)
	if err := unix.Bind(c, src); err != nil {
		return err
	}
	if err := unix.Connect(c, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: int(port)}); err != nil {
		return err
	}
	s, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC)
	if err != nil {
		return err
	}
	if err := unix.Shutdown(c, unix.SHUT_WR); err != nil {
		return err
	}
	var b [1]byte
	if _, err := unix.Read(s, b[:]); err != nil {
		return err
	}
	if err := unix.Close(s); err != nil {
		return err
	}
	// Our side reads the server's FIN: it is in TIME_WAIT before its close.
	_, err = unix.Read(c, b[:])
	return err
}
