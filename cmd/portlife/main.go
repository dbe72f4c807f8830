// Command portlife traces the lifetime of every TCP and UDP port on the host
// and writes one event per open, close and failed connect. This file only
// wires flags, logging, signals and output to the tracer package.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/output"
	"github.com/portlife/portlife/tracer"
)

// Exit codes: usage errors are told apart from failures at run time.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr *os.File) int {
	opts, err := parseFlags(args, isTerminal(stdout), isTerminal(stderr), func(fs *pflag.FlagSet) {
		fmt.Fprintf(stderr, "Usage: portlife [flags]\n\nTraces every TCP and UDP port's lifetime on this host. Needs root.\n\nFlags:\n%s", fs.FlagUsages())
	})
	switch {
	case errors.Is(err, pflag.ErrHelp):
		return exitOK
	case err != nil:
		fmt.Fprintf(stderr, "portlife: %v (see portlife --help)\n", err)
		return exitUsage
	}

	log := newLogger(stderr, opts.logFormat, opts.debug)
	defer log.Sync()
	if err := trace(ctx, opts, stdout, log); err != nil {
		log.Error("portlife failed", zap.Error(err))
		return exitError
	}
	return exitOK
}

func trace(ctx context.Context, opts options, stdout io.Writer, log *zap.Logger) error {
	t, err := tracer.New(opts.cfg, log)
	if err != nil {
		return err
	}
	defer t.Close()

	var sink tracer.Sink = output.NewJSON(stdout)
	if opts.output == "text" {
		sink = output.NewText(stdout)
	}
	log.Info("tracing started", zap.String("output", opts.output))
	runErr := t.Run(ctx, sink)

	s, err := t.Stats()
	log.Info("tracing stopped",
		zap.Uint64("events", s.Events),
		zap.Uint64("lost", s.Lost()),
		zap.Uint64("ringbuf_full", s.RingbufFull),
		zap.Uint64("storage_full", s.StorageFull),
		zap.Uint64("table_full", s.TableFull))
	if s.Lost() > 0 {
		log.Warn("the kernel side could not deliver every event: raise --ring-buffer, or narrow the filters",
			zap.Uint64("lost", s.Lost()))
	}
	return errors.Join(runErr, err)
}

func newLogger(w io.Writer, format string, debug bool) *zap.Logger {
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.RFC3339NanoTimeEncoder
	var encoder zapcore.Encoder
	if format == "json" {
		encoder = zapcore.NewJSONEncoder(enc)
	} else {
		enc.EncodeLevel = zapcore.CapitalColorLevelEncoder
		encoder = zapcore.NewConsoleEncoder(enc)
	}
	level := zap.InfoLevel
	if debug {
		level = zap.DebugLevel
	}
	return zap.New(zapcore.NewCore(encoder, zapcore.Lock(zapcore.AddSync(w)), level))
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
