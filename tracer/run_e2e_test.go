package tracer

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/portlife/portlife/internal/event"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
)

// Run may be observed while it runs (a metrics endpoint reads Stats), and
// when it returns every goroutine it started has ended, so Close cannot race
// one of them.
func TestRunIsObservableAndJoinsItsGoroutines(t *testing.T) {
	requireRoot(t)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())

	cfg := DefaultConfig()
	cfg.FlushInterval = 10 * time.Millisecond
	tr, err := New(cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	events := newCollector()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx, events) }()

	// Read the counters from another goroutine while events flow; the race
	// detector (make test runs with -race) checks that this is safe.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := tr.Stats(); err != nil {
				t.Errorf("Stats while running: %v", err)
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	c, server := loopbackConn(t)
	c.Close()
	events.waitFor(t, 1, ofConn(addrPort(t, c.LocalAddr()), server))

	close(stop)
	wg.Wait()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	s, err := tr.Stats()
	if err != nil || s.Events == 0 {
		t.Errorf("Stats after Run = %+v, %v: want the events counted", s, err)
	}
	if err := tr.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// A step of the wall clock (NTP, a resumed VM) shows in event times once
// Run re-anchors, which it does at most every anchorEvery.
func TestReanchorFollowsTheWallClock(t *testing.T) {
	tr := &Tracer{log: zaptest.NewLogger(t), dec: decoder{bootTime: time.Unix(0, 0)}}
	last := time.Now()
	tr.reanchor(&last)
	if !tr.dec.bootTime.Equal(time.Unix(0, 0)) {
		t.Fatalf("re-anchored %v after the last anchor, want to wait %v", time.Since(last), anchorEvery)
	}
	last = time.Now().Add(-anchorEvery)
	tr.reanchor(&last)
	fresh, err := newDecoder()
	if err != nil {
		t.Fatal(err)
	}
	if off := tr.dec.bootTime.Sub(fresh.bootTime); off < -time.Second || off > time.Second {
		t.Errorf("after re-anchoring, boot time is %v off the clocks", off)
	}
	if time.Since(last) > time.Second {
		t.Errorf("the anchor's time was not moved on")
	}
}

// flushed keeps events written to it out of sight until Flush, as a
// buffered stdout would.
type flushed struct {
	pending []event.Event
	*collector
}

func (f *flushed) Write(e *event.Event) error {
	f.pending = append(f.pending, *e)
	return nil
}

func (f *flushed) Flush() error {
	for i := range f.pending {
		f.collector.Write(&f.pending[i])
	}
	f.pending = f.pending[:0]
	return nil
}

// --flush-interval 0 writes each event as soon as it is read: the reader
// has no deadline then, so only flushing whenever it has caught up makes
// the events visible at all.
func TestFlushIntervalZeroWritesAtOnce(t *testing.T) {
	requireRoot(t)
	cfg := DefaultConfig()
	cfg.FlushInterval = 0
	tr, err := New(cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	out := &flushed{collector: newCollector()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx, out) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		tr.Close()
	}()

	c, _ := loopbackConn(t)
	// The open of our connection, flushed while tracing still runs.
	out.waitFor(t, 1, func(e *event.Event) bool {
		return e.Kind == event.KindOpen && e.Local == addrPort(t, c.LocalAddr())
	})
}

// Adopting sockets runs the iterator from a thread inside each network
// namespace. No thread of ours may stay there: when the runtime parked the
// main thread in another namespace, the whole process seemed to live there
// (its /proc/self), and would dial from it. Repeated, because which thread
// the iterator's goroutine lands on is up to the scheduler.
func TestAdoptionLeavesNoThreadInAnotherNetns(t *testing.T) {
	requireRoot(t)
	own := netnsInode(t, "/proc/thread-self/ns/net")
	other := exec.Command("sleep", "60")
	other.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		other.Process.Kill()
		other.Wait()
	}()
	if netnsInode(t, fmt.Sprintf("/proc/%d/ns/net", other.Process.Pid)) == own {
		t.Fatal("the helper is in our network namespace: the test would prove nothing")
	}
	for i := 0; i < 20; i++ {
		tr, err := New(DefaultConfig(), zaptest.NewLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		tr.Close()
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			t.Fatal(err)
		}
		for _, task := range tasks {
			var st unix.Stat_t
			if unix.Stat("/proc/self/task/"+task.Name()+"/ns/net", &st) != nil {
				continue // the thread has exited
			}
			if ns := uint32(st.Ino); ns != own {
				t.Fatalf("after adoption %d, thread %s is in network namespace %d, not ours (%d)", i+1, task.Name(), ns, own)
			}
		}
	}
}
