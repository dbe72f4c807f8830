// Command soak runs portlife for a long time under a paced churn, with the
// store and a file output on, and checks that it holds steady: each minute
// it prints portlife's RSS, Go heap (from GODEBUG=gctrace), threads, open
// fds, the store's size and the events lost so far, and at the end it
// fails if RSS, threads or fds grew after the warm-up.
//
//	make soak                           # 60 minutes at 5,000 connections/s
//	go run ./test/soak --minutes 5 --rate 1000
//
// Needs root, and a quiet machine: the churn and portlife take most of a
// CPU. It is not part of make test. Goroutines are not visible from
// outside the process; threads stand in for them until portlife serves
// /metrics.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	var (
		minutes  = flag.Int("minutes", 60, "how long to run")
		warmup   = flag.Int("warmup", 5, "minutes before RSS, threads and fds must be flat (at most a quarter of the run)")
		rate     = flag.Float64("rate", 5000, "connections per second, paced")
		workers  = flag.Int("workers", 8, "churn client loops")
		portlife = flag.String("portlife", "bin/portlife", "the portlife binary")
		churn    = flag.String("churn", "bin/churn", "the churn binary (bench/churn)")
		dir      = flag.String("dir", "", "where the store and the events go (default: a temporary directory, removed after)")
		growth   = flag.Float64("max-growth", 0.2, "largest growth of RSS after the warm-up, as a fraction of its value then (plus 8 MiB)")
	)
	flag.Parse()
	if *minutes < 1 || *rate <= 0 || *warmup < 0 || *warmup > *minutes/4 && *minutes >= 4 {
		fmt.Fprintln(os.Stderr, "soak: want --minutes of at least 1, a positive --rate, and a --warmup of at most a quarter of --minutes")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *minutes, *warmup, *rate, *workers, *portlife, *churn, *dir, *growth); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}

// sample is one minute's reading.
type sample struct {
	minute        int
	rss, heap     int64 // bytes
	threads, fds  int
	store, events int64  // bytes on disk
	lost          uint64 // as the last "events lost" warning said: the kernel's and the queues'
}

func run(ctx context.Context, minutes, warmup int, rate float64, workers int, portlife, churn, dir string, growth float64) error {
	if dir == "" {
		tmp, err := os.MkdirTemp("", "portlife-soak")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	db := filepath.Join(dir, "history.db")
	events, err := os.Create(filepath.Join(dir, "events.json"))
	if err != nil {
		return err
	}
	defer events.Close()

	p := exec.Command(portlife, "trace", "--output", "json", "--log-format", "json", "--store", db, "--stats-interval", "1m")
	p.Stdout = events
	p.Env = append(os.Environ(), "GODEBUG=gctrace=1")
	stderr, err := p.StderrPipe()
	if err != nil {
		return err
	}
	if err := p.Start(); err != nil {
		return err
	}
	defer p.Process.Kill()
	logs := newLogWatch(stderr)
	select {
	case <-logs.started:
	case <-time.After(30 * time.Second):
		return errors.New("portlife did not start within 30s")
	}

	c := exec.CommandContext(ctx, churn, "both", "--rate", strconv.FormatFloat(rate, 'f', -1, 64),
		"--workers", strconv.Itoa(workers), "--duration", (time.Duration(minutes) * time.Minute).String())
	c.Stdout, c.Stderr = os.Stderr, os.Stderr
	if err := c.Start(); err != nil {
		return err
	}
	churnDone := make(chan error, 1)
	go func() { churnDone <- c.Wait() }()

	fmt.Printf("%6s %9s %9s %7s %5s %10s %10s %8s\n", "MINUTE", "RSS_MiB", "HEAP_MiB", "THREADS", "FDS", "STORE_MiB", "EVENTS_MiB", "LOST")
	var samples []sample
	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	for m := 1; m <= minutes; m++ {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-churnDone:
			if m < minutes {
				return fmt.Errorf("churn ended early: %v", err)
			}
		case <-tick.C:
		}
		s, err := read(p.Process.Pid, db, events.Name(), logs)
		if err != nil {
			return err
		}
		s.minute = m
		samples = append(samples, s)
		fmt.Printf("%6d %9.1f %9.1f %7d %5d %10.1f %10.1f %8d\n", m, mib(s.rss), mib(s.heap), s.threads, s.fds, mib(s.store), mib(s.events), s.lost)
	}
	<-churnDone
	p.Process.Signal(os.Interrupt)
	if err := p.Wait(); err != nil {
		return fmt.Errorf("portlife: %w", err)
	}
	<-logs.done
	fmt.Println("tracing stopped:", logs.stopped)
	return flat(samples, warmup, growth)
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// flat fails if RSS grew by more than growth (and 8 MiB) after the warm-up,
// or threads or fds grew at all beyond a little slack.
func flat(samples []sample, warmup int, growth float64) error {
	if len(samples) <= warmup {
		return nil
	}
	base := samples[warmup]
	if warmup > 0 {
		base = samples[warmup-1]
	}
	var errs []error
	for _, s := range samples[warmup:] {
		if float64(s.rss) > float64(base.rss)*(1+growth)+8<<20 {
			errs = append(errs, fmt.Errorf("minute %d: RSS %.1f MiB, up from %.1f after the warm-up", s.minute, mib(s.rss), mib(base.rss)))
		}
		if s.threads > base.threads+4 {
			errs = append(errs, fmt.Errorf("minute %d: %d threads, up from %d", s.minute, s.threads, base.threads))
		}
		if s.fds > base.fds+4 {
			errs = append(errs, fmt.Errorf("minute %d: %d open fds, up from %d", s.minute, s.fds, base.fds))
		}
	}
	if len(errs) == 0 {
		fmt.Printf("flat after minute %d: RSS, threads and fds held\n", base.minute)
	}
	return errors.Join(errs...)
}

func read(pid int, db, events string, logs *logWatch) (sample, error) {
	var s sample
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, fmt.Errorf("portlife is gone: %w", err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 2 && f[0] == "VmRSS:":
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			s.rss = kb << 10
		case len(f) >= 2 && f[0] == "Threads:":
			s.threads, _ = strconv.Atoi(f[1])
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return s, err
	}
	s.fds = len(fds)
	for _, f := range []string{db, db + "-wal"} {
		if fi, err := os.Stat(f); err == nil {
			s.store += fi.Size()
		}
	}
	if fi, err := os.Stat(events); err == nil {
		s.events = fi.Size()
	}
	logs.mu.Lock()
	s.heap, s.lost = logs.heap, logs.lost
	logs.mu.Unlock()
	return s, nil
}

// logWatch reads portlife's stderr: its JSON log lines and the runtime's
// gctrace lines.
type logWatch struct {
	started, done chan struct{}
	mu            sync.Mutex
	heap          int64
	lost          uint64
	stopped       string
}

// gc 12 @3.1s 0%: ... 4->4->2 MB, 5 MB goal, ...: the live heap after GC.
var gctrace = regexp.MustCompile(`^gc \d+ @.*?(\d+)->(\d+)->(\d+) MB`)

func newLogWatch(r interface{ Read([]byte) (int, error) }) *logWatch {
	l := &logWatch{started: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		startedOnce := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			if m := gctrace.FindStringSubmatch(line); m != nil {
				live, _ := strconv.ParseInt(m[3], 10, 64)
				l.mu.Lock()
				l.heap = live << 20
				l.mu.Unlock()
				continue
			}
			var entry struct {
				Msg  string `json:"msg"`
				Lost uint64 `json:"lost"`
			}
			if json.Unmarshal([]byte(line), &entry) != nil {
				fmt.Fprintln(os.Stderr, line)
				continue
			}
			switch entry.Msg {
			case "tracing started":
				startedOnce.Do(func() { close(l.started) })
			case "events lost", "tracing stopped":
				l.mu.Lock()
				l.lost = entry.Lost
				if entry.Msg == "tracing stopped" {
					l.stopped = line
				}
				l.mu.Unlock()
			}
			if entry.Msg != "tracing started" {
				fmt.Fprintln(os.Stderr, line)
			}
		}
	}()
	return l
}
