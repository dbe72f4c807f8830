// Command portlife traces the lifetime of every TCP and UDP port on the host
// and writes one event per open, close and failed connect. main only picks
// the subcommand; each lives in a file of its own (trace.go, query.go, version.go),
// and the flags they share are in flags.go.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"
)

// Exit codes: usage errors are told apart from failures at run time.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
	// exitOutputClosed: whoever read stdout stopped reading (`| head`).
	// The run ended as on a signal, with its summary on stderr; a service
	// manager sees it as a failure worth a restart.
	exitOutputClosed = 3
)

const usageHead = `Usage: portlife [trace] [flags]    trace every port's lifetime (needs root)
       portlife ports [flags]      which keys are running out of ports, now
       portlife top [flags]        a live view of the churn, per process or destination
       portlife query [flags]      ask the history trace --store keeps: who held a port when
       portlife version            print the version and exit

`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// A closed stdout must end the run like a signal, with the summary:
	// with SIGPIPE ignored, the write fails with EPIPE instead of killing us.
	signal.Ignore(syscall.SIGPIPE)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run dispatches to a subcommand; with none, or with flags first, it traces.
func run(ctx context.Context, args []string, stdout, stderr *os.File) int {
	cmd, rest := "trace", args
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, rest = args[0], args[1:]
	}
	switch cmd {
	case "trace":
		return runTrace(ctx, rest, stdout, stderr)
	case "top":
		return runTop(ctx, rest, os.Stdin, stdout, stderr)
	case "query":
		return runQuery(ctx, rest, stdout, stderr)
	case "version":
		return runVersion(rest, stdout, stderr)
	case "ports":
		return runPorts(ctx, rest, stdout, stderr)
	case "help":
		return runTrace(ctx, []string{"--help"}, stdout, stderr)
	}
	fmt.Fprintf(stderr, "portlife: unknown command %q: want trace, ports, top, query or version (see portlife --help)\n", cmd)
	return exitUsage
}

func newLogger(w io.Writer, o logOptions) *zap.Logger {
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.RFC3339NanoTimeEncoder
	var encoder zapcore.Encoder
	if o.format == "json" {
		encoder = zapcore.NewJSONEncoder(enc)
	} else {
		enc.EncodeLevel = zapcore.CapitalColorLevelEncoder
		encoder = zapcore.NewConsoleEncoder(enc)
	}
	level := zap.InfoLevel
	if o.debug {
		level = zap.DebugLevel
	}
	return zap.New(zapcore.NewCore(encoder, zapcore.Lock(zapcore.AddSync(w)), level))
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
