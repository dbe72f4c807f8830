package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/portlife/portlife/internal/sink"
	"github.com/portlife/portlife/internal/stream"
	"github.com/portlife/portlife/tracer"
)

// options is the parsed command line of `portlife trace`.
type options struct {
	output        string // text or json
	log           logOptions
	statsInterval time.Duration // how often to warn while events are lost
	version       bool
	cfg           tracer.Config
	timewait      timeWaitOptions
	ports         portsOptions
	summary       summaryOptions
	metrics       metricsOptions
	store         storeOptions
	sinks         []sink.Spec // --sink; none means stdout
}

// parseFlags reads the arguments of `portlife trace` into options. Every
// value is checked here, so a mistake is reported before anything is loaded
// into the kernel.
func parseFlags(args []string, stdoutIsTerminal, stderrIsTerminal bool, usage func(*pflag.FlagSet)) (options, error) {
	fs := pflag.NewFlagSet("portlife", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.Usage = func() { usage(fs) }

	o := options{cfg: tracer.DefaultConfig(), statsInterval: 10 * time.Second, ports: defaultPortsOptions()}
	fs.Var(&choiceValue{p: &o.output, choices: []string{"text", "json"}}, "output", "event format: text or json (default text on a terminal, json otherwise)")
	addFilterFlags(fs, &o.cfg.Filter)
	fs.Var(ringSizeValue{&o.cfg.RingBufferSize}, "ring-buffer", "kernel-to-user buffer: a power of two from 4KiB to 1GiB; it costs twice this in RSS")
	fs.Var(durationValue{&o.cfg.FlushInterval}, "flush-interval", "longest an event waits before it is written; 0 wakes the reader for each event, at more CPU")
	fs.Var(durationValue{&o.statsInterval}, "stats-interval", "how often to warn while events are being lost; 0 only at exit")
	fs.Var(niceValue{&o.cfg.ReaderNice}, "reader-nice", "nice value of the thread that reads and writes events, so a CPU-saturated host cannot starve it; 0 leaves it unchanged")
	fs.Var(countValue{&o.cfg.MaxSockets, 1 << 24}, "max-sockets", "before Linux 5.11 only: most sockets tracked at once, in a table that stands in for socket storage; beyond it, sockets are not traced, and counted")
	addTimeWaitFlags(fs, &o.timewait)
	addPortsFlags(fs, &o.ports)
	addSummaryFlags(fs, &o.summary)
	addMetricsFlags(fs, &o.metrics)
	addStoreFlags(fs, &o.store)
	addSinkFlags(fs, &o.sinks)
	addLogFlags(fs, &o.log)
	fs.BoolVar(&o.version, "version", false, "print the version and exit")

	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q: portlife trace takes only flags", fs.Arg(0))
	}
	o.output = defaultTo(o.output, "text", "json", stdoutIsTerminal)
	o.log.format = defaultTo(o.log.format, "console", "json", stderrIsTerminal)
	o.summary.check()
	// The flag values applied each rule as they parsed; this catches a rule
	// the filter adds that no flag knows of yet.
	return o, errors.Join(o.cfg.Filter.Validate(), o.store.check())
}

func runTrace(ctx context.Context, args []string, stdout, stderr *os.File) int {
	opts, err := parseFlags(args, isTerminal(stdout), isTerminal(stderr), func(fs *pflag.FlagSet) {
		fmt.Fprintf(stderr, "%sTraces every TCP and UDP port's lifetime on this host. Needs root.\n\nFlags:\n%s", usageHead, fs.FlagUsages())
	})
	switch {
	case errors.Is(err, pflag.ErrHelp):
		return exitOK
	case err != nil:
		fmt.Fprintf(stderr, "portlife: %v (see portlife --help)\n", err)
		return exitUsage
	case opts.version:
		printVersion(stdout)
		return exitOK
	}

	log := newLogger(stderr, opts.log)
	defer log.Sync()
	err = trace(ctx, opts, stdout, log)
	switch {
	case errors.Is(err, syscall.EPIPE):
		log.Warn("stdout was closed by its reader: tracing stopped")
		return exitOutputClosed
	case err != nil:
		log.Error("portlife failed", zap.Error(err))
		return exitError
	}
	return exitOK
}

// trace wires the flow: the tracer reads the kernel's ring and decodes, the
// stream fans each event out, and stdout, the primary output, gets it
// inline. A consumer that must never slow the reader (a network sink, the
// store, accounting, metrics) subscribes to the stream with a queue of its
// own, between New and Run.
func trace(ctx context.Context, opts options, stdout io.Writer, log *zap.Logger) error {
	st, err := openStore(ctx, opts.store, log)
	if err != nil {
		return err
	}
	ms, err := opts.metrics.listen()
	if err != nil {
		return errors.Join(err, closeStore(st))
	}
	sinks, err := openSinks(opts.sinks, opts.output, stdout)
	if err != nil {
		ms.stop()
		return errors.Join(err, closeStore(st))
	}
	t, err := tracer.New(opts.cfg, log)
	if err != nil {
		ms.stop()
		sinks.close(log)
		return errors.Join(err, closeStore(st))
	}
	defer t.Close()

	var primary stream.Consumer // nil without stdout among the sinks
	if sinks.primary != nil {
		primary = opts.summary.primary(sinks.primary)
	}
	s := stream.New(primary)
	sinks.subscribe(s)
	// Accounting first: the summaries and the metrics read its keys.
	acct, stopAccounting := startAccounting(s, opts.ports, &opts.cfg.Filter, t.KernelCookies(), log)
	sums := opts.summary.start(s, acct)
	ms.serve(t, s, sinks, acct, opts.timewait.runs(&opts.cfg.Filter), log)
	subscribeStore(s, st)

	watchCtx, stopWatching := context.WithCancel(ctx)
	var wg sync.WaitGroup
	l := losses{tracer: t, stream: s, sinks: sinks, counters: func() []zap.Field { return storeFields(st) }}
	l.timewait = startTimeWait(watchCtx, opts.timewait, &opts.cfg.Filter, s, log, &wg)

	wg.Add(1)
	go func() {
		defer wg.Done()
		l.watch(watchCtx, log, opts.statsInterval)
	}()

	wg.Add(1)
	go func() {
		defer wg.Done()
		dropWhenAttached(watchCtx, t, log)
	}()

	sinks.reopenOnHangup(watchCtx, log)
	// Start-up's garbage is most of the heap it ever had: the kernel's BTF
	// read for loading, and port accounting's socket listing (100,000
	// TIME_WAITs make about 40 MB). Hand it back to the kernel now rather
	// than carry it in RSS until the scavenger gets to it.
	debug.FreeOSMemory()
	log.Info("tracing started", zap.String("output", opts.output), zap.Strings("sinks", sinks.names()))
	runErr := t.Run(ctx, s)
	stopAccounting()
	sums.finish(s, log)
	closeErr := errors.Join(s.Close(), sinks.close(log), closeStore(st), ms.stop())
	stopWatching()
	wg.Wait()

	accountingSummary(acct, log)
	statsErr := l.summary(log)
	sums.report(log)
	return errors.Join(runErr, closeErr, statsErr)
}
