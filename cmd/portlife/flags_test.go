package main

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/portlife/portlife/internal/event"
	"github.com/portlife/portlife/internal/timewait"
	"github.com/portlife/portlife/tracer"
)

func noUsage(*pflag.FlagSet) {}

// parse runs parseFlags as if neither stdout nor stderr were a terminal.
func parse(args ...string) (options, error) {
	return parseFlags(args, false, false, noUsage)
}

func TestParseFlagsDefaults(t *testing.T) {
	tests := []struct {
		name                 string
		stdoutTTY, stderrTTY bool
		wantOutput, wantLog  string
	}{
		{"both terminals: for people", true, true, "text", "console"},
		{"both piped: for machines", false, false, "json", "json"},
		{"stdout piped, stderr on a terminal", false, true, "json", "console"},
		{"stdout on a terminal, stderr piped", true, false, "text", "json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseFlags(nil, tt.stdoutTTY, tt.stderrTTY, noUsage)
			if err != nil {
				t.Fatalf("parseFlags(nil): %v", err)
			}
			if o.output != tt.wantOutput || o.log.format != tt.wantLog {
				t.Errorf("output, log-format = %s, %s, want %s, %s", o.output, o.log.format, tt.wantOutput, tt.wantLog)
			}
			if o.log.debug {
				t.Error("debug is on by default")
			}
			if o.timewait.on || o.timewait.cfg != timewait.DefaultConfig() {
				t.Errorf("timewait = %+v, want off, with DefaultConfig() %+v", o.timewait, timewait.DefaultConfig())
			}
			// No flags means the tracer's defaults, with no filter at all.
			if want := tracer.DefaultConfig(); !reflect.DeepEqual(o.cfg, want) {
				t.Errorf("cfg = %+v, want DefaultConfig() %+v", o.cfg, want)
			}
		})
	}
	t.Run("an explicit format wins over the terminal check", func(t *testing.T) {
		o, err := parseFlags([]string{"--output", "json", "--log-format", "console"}, true, false, noUsage)
		if err != nil {
			t.Fatal(err)
		}
		if o.output != "json" || o.log.format != "console" {
			t.Errorf("output, log-format = %s, %s, want json, console", o.output, o.log.format)
		}
	})
}

func TestParseFlagsGood(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		check func(t *testing.T, o options)
	}{
		{"output text", []string{"--output", "text"}, func(t *testing.T, o options) {
			if o.output != "text" {
				t.Errorf("output = %q", o.output)
			}
		}},
		{"released events on, tuned", []string{"--released", "--released-interval", "250ms", "--released-max", "1000"}, func(t *testing.T, o options) {
			if !o.timewait.on || o.timewait.cfg.Interval != 250*time.Millisecond || o.timewait.cfg.Max != 1000 {
				t.Errorf("timewait = %+v", o.timewait)
			}
		}},
		{"log-format json", []string{"--log-format=json"}, func(t *testing.T, o options) {
			if o.log.format != "json" {
				t.Errorf("logFormat = %q", o.log.format)
			}
		}},
		{"debug", []string{"--debug"}, func(t *testing.T, o options) {
			if !o.log.debug {
				t.Error("debug is off")
			}
		}},
		{"events as a list and repeated", []string{"--events", "open,close", "--events", "connect_failed"}, func(t *testing.T, o options) {
			if want := []event.Kind{event.KindOpen, event.KindClose, event.KindConnectFailed}; !reflect.DeepEqual(o.cfg.Filter.Kinds, want) {
				t.Errorf("Kinds = %v, want %v", o.cfg.Filter.Kinds, want)
			}
		}},
		{"proto tcp", []string{"--proto", "tcp"}, func(t *testing.T, o options) {
			if want := []event.Proto{event.ProtoTCP}; !reflect.DeepEqual(o.cfg.Filter.Protos, want) {
				t.Errorf("Protos = %v, want %v", o.cfg.Filter.Protos, want)
			}
		}},
		{"proto udp,tcp", []string{"--proto", "udp,tcp"}, func(t *testing.T, o options) {
			if want := []event.Proto{event.ProtoUDP, event.ProtoTCP}; !reflect.DeepEqual(o.cfg.Filter.Protos, want) {
				t.Errorf("Protos = %v, want %v", o.cfg.Filter.Protos, want)
			}
		}},
		{"summary-only alone summarizes every 10s", []string{"--summary-only"}, func(t *testing.T, o options) {
			if !o.summary.only || o.summary.interval != 10*time.Second || o.summary.top != 20 {
				t.Errorf("summary %+v", o.summary)
			}
		}},
		{"summary and its top", []string{"--summary", "2s", "--summary-top", "5"}, func(t *testing.T, o options) {
			if o.summary.only || o.summary.interval != 2*time.Second || o.summary.top != 5 {
				t.Errorf("summary %+v", o.summary)
			}
		}},
		{"metrics-addr: a port alone is localhost", []string{"--metrics-addr", "9608"}, func(t *testing.T, o options) {
			if o.metrics.addr != "127.0.0.1:9608" {
				t.Errorf("metrics addr %q", o.metrics.addr)
			}
		}},
		{"metrics-addr: every interface when asked", []string{"--metrics-addr", "0.0.0.0:9608"}, func(t *testing.T, o options) {
			if o.metrics.addr != "0.0.0.0:9608" {
				t.Errorf("metrics addr %q", o.metrics.addr)
			}
		}},
		{"workload filters", []string{"--unit", "nginx", "--container", "0123456789ab", "--netns", "4026531840"}, func(t *testing.T, o options) {
			f := o.cfg.Filter
			if !reflect.DeepEqual(f.Units, []string{"nginx.service"}) || !reflect.DeepEqual(f.Containers, []string{"0123456789ab"}) || !reflect.DeepEqual(f.NetNS, []uint32{4026531840}) {
				t.Errorf("Units %q, Containers %q, NetNS %v", f.Units, f.Containers, f.NetNS)
			}
		}},
		{"pid", []string{"--pid", "4242"}, func(t *testing.T, o options) {
			if o.cfg.Filter.PID != 4242 {
				t.Errorf("PID = %d", o.cfg.Filter.PID)
			}
		}},
		{"comm of 15 bytes", []string{"--comm", "systemd-resolve"}, func(t *testing.T, o options) {
			if o.cfg.Filter.Comm != "systemd-resolve" {
				t.Errorf("Comm = %q", o.cfg.Filter.Comm)
			}
		}},
		{"lport list, range and repeat", []string{"--lport", "443,8000-8999", "--lport", "22"}, func(t *testing.T, o options) {
			if want := []event.PortRange{{Lo: 443, Hi: 443}, {Lo: 8000, Hi: 8999}, {Lo: 22, Hi: 22}}; !reflect.DeepEqual(o.cfg.Filter.LocalPorts, want) {
				t.Errorf("LocalPorts = %v, want %v", o.cfg.Filter.LocalPorts, want)
			}
		}},
		{"rport", []string{"--rport=53"}, func(t *testing.T, o options) {
			if want := []event.PortRange{{Lo: 53, Hi: 53}}; !reflect.DeepEqual(o.cfg.Filter.RemotePorts, want) {
				t.Errorf("RemotePorts = %v, want %v", o.cfg.Filter.RemotePorts, want)
			}
		}},
		{"raddr CIDR and address", []string{"--raddr", "10.1.2.3/8,::1"}, func(t *testing.T, o options) {
			want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")}
			if !reflect.DeepEqual(o.cfg.Filter.RemoteNets, want) {
				t.Errorf("RemoteNets = %v, want %v", o.cfg.Filter.RemoteNets, want)
			}
		}},
		{"family 4", []string{"--family", "4"}, func(t *testing.T, o options) {
			if o.cfg.Filter.Family != 4 {
				t.Errorf("Family = %d", o.cfg.Filter.Family)
			}
		}},
		{"family ipv6", []string{"--family", "ipv6"}, func(t *testing.T, o options) {
			if o.cfg.Filter.Family != 6 {
				t.Errorf("Family = %d", o.cfg.Filter.Family)
			}
		}},
		{"direction outbound", []string{"--direction", "outbound"}, func(t *testing.T, o options) {
			if o.cfg.Filter.Direction != event.DirectionOutbound {
				t.Errorf("Direction = %v", o.cfg.Filter.Direction)
			}
		}},
		{"direction inbound", []string{"--direction", "inbound"}, func(t *testing.T, o options) {
			if o.cfg.Filter.Direction != event.DirectionInbound {
				t.Errorf("Direction = %v", o.cfg.Filter.Direction)
			}
		}},
		{"ephemeral-only", []string{"--ephemeral-only"}, func(t *testing.T, o options) {
			if !o.cfg.Filter.EphemeralOnly {
				t.Error("EphemeralOnly is off")
			}
		}},
		{"min-duration", []string{"--min-duration", "10ms"}, func(t *testing.T, o options) {
			if o.cfg.Filter.MinDuration != 10*time.Millisecond {
				t.Errorf("MinDuration = %v", o.cfg.Filter.MinDuration)
			}
		}},
		{"flush-interval 0 writes at once", []string{"--flush-interval", "0"}, func(t *testing.T, o options) {
			if o.cfg.FlushInterval != 0 {
				t.Errorf("FlushInterval = %v", o.cfg.FlushInterval)
			}
		}},
		{"stats-interval", []string{"--stats-interval", "1m"}, func(t *testing.T, o options) {
			if o.statsInterval != time.Minute {
				t.Errorf("StatsInterval = %v", o.statsInterval)
			}
		}},
		{"ring-buffer", []string{"--ring-buffer", "16MiB"}, func(t *testing.T, o options) {
			if o.cfg.RingBufferSize != 16<<20 {
				t.Errorf("RingBufferSize = %d", o.cfg.RingBufferSize)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parse(tt.args...)
			if err != nil {
				t.Fatalf("parseFlags(%q): %v", tt.args, err)
			}
			tt.check(t, o)
		})
	}
}

// A mistake must be reported before anything loads, in one line that
// names the flag, so the user knows what to fix.
func TestParseFlagsBad(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string // the error must contain this
	}{
		{"output", []string{"--output", "yaml"}, "--output"},
		{"log-format", []string{"--log-format", "text"}, "--log-format"},
		{"events", []string{"--events", "open,opened"}, "--events"},
		{"proto", []string{"--proto", "sctp"}, "--proto"},
		{"pid not a number", []string{"--pid", "self"}, "--pid"},
		{"pid negative", []string{"--pid", "-1"}, "--pid"},
		{"comm too long", []string{"--comm", "0123456789abcdef"}, "--comm"},
		{"lport", []string{"--lport", "http"}, "--lport"},
		{"lport reversed", []string{"--lport", "9-1"}, "--lport"},
		{"lport too many ranges", []string{"--lport", "1,2,3,4,5,6,7,8,9"}, "--lport"},
		{"rport", []string{"--rport", "65536"}, "--rport"},
		{"rport too many ranges", []string{"--rport", "1,2,3,4,5,6,7,8,9"}, "--rport"},
		{"raddr", []string{"--raddr", "example.com"}, "--raddr"},
		{"raddr too many networks", manyRaddrs(65), "--raddr"},
		{"family", []string{"--family", "5"}, "--family"},
		{"direction", []string{"--direction", "sideways"}, "--direction"},
		{"ring-buffer not a power of two", []string{"--ring-buffer", "3MiB"}, "--ring-buffer"},
		{"ring-buffer not a size", []string{"--ring-buffer", "big"}, "--ring-buffer"},
		{"min-duration not a duration", []string{"--min-duration", "10"}, "--min-duration"},
		{"min-duration negative", []string{"--min-duration", "-1s"}, "--min-duration"},
		{"flush-interval negative", []string{"--flush-interval", "-1s"}, "--flush-interval"},
		{"stats-interval negative", []string{"--stats-interval", "-1s"}, "--stats-interval"},
		{"released-interval too short", []string{"--released-interval", "10ms"}, "--released-interval"},
		{"released-interval too long", []string{"--released-interval", "1m"}, "--released-interval"},
		{"released-interval not a duration", []string{"--released-interval", "1"}, "--released-interval"},
		{"released-max zero", []string{"--released-max", "0"}, "--released-max"},
		{"released-max not a number", []string{"--released-max", "many"}, "--released-max"},
		{"released with a value", []string{"--released=maybe"}, "--released"},
		{"pressure-thresholds above 100", []string{"--pressure-thresholds", "50,120"}, "--pressure-thresholds"},
		{"pressure-thresholds descending", []string{"--pressure-thresholds", "80,50"}, "--pressure-thresholds"},
		{"pressure-thresholds not numbers", []string{"--pressure-thresholds", "high"}, "--pressure-thresholds"},
		{"pressure-thresholds empty", []string{"--pressure-thresholds", ""}, "--pressure-thresholds"},
		{"port-keys zero", []string{"--port-keys", "0"}, "--port-keys"},
		{"max-sockets zero", []string{"--max-sockets", "0"}, "--max-sockets"},
		{"max-sockets too many", []string{"--max-sockets", "99999999"}, "--max-sockets"},
		{"summary too short", []string{"--summary", "10ms"}, "--summary"},
		{"summary-top 0", []string{"--summary-top", "0"}, "--summary-top"},
		{"metrics-addr not an address", []string{"--metrics-addr", "localhost"}, "--metrics-addr"},
		{"unit with a path", []string{"--unit", "system.slice/web.service"}, "--unit"},
		{"container name", []string{"--container", "my-app"}, "--container"},
		{"netns not a namespace", []string{"--netns", "/etc/hostname"}, "--netns"},
		{"netns a name", []string{"--netns", "blue"}, "--netns"},
		{"unknown flag", []string{"--nope"}, "--nope"},
		{"extra positional argument", []string{"--debug", "extra"}, `"extra"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse(tt.args...)
			if err == nil {
				t.Fatalf("parseFlags(%.80q) succeeded, want an error naming %s", strings.Join(tt.args, " "), tt.want)
			}
			if errors.Is(err, pflag.ErrHelp) {
				t.Fatalf("parseFlags(%q) = ErrHelp, want a usage error", tt.args)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("parseFlags(%.80q): error %q does not name the flag %s", strings.Join(tt.args, " "), err, tt.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q spans lines, want one", err)
			}
		})
	}
}

func manyRaddrs(n int) []string {
	var args []string
	for i := 0; i < n; i++ {
		args = append(args, "--raddr", netip.AddrFrom4([4]byte{10, byte(i), 0, 1}).String())
	}
	return args
}

func TestParseFlagsHelp(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"--family", "4", "--help"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			called := false
			_, err := parseFlags(args, false, false, func(fs *pflag.FlagSet) {
				called = true
				if fs.Lookup("ring-buffer") == nil {
					t.Error("usage got a flag set without --ring-buffer")
				}
			})
			if !errors.Is(err, pflag.ErrHelp) {
				t.Errorf("parseFlags(%q) = %v, want pflag.ErrHelp", args, err)
			}
			if !called {
				t.Error("usage was not printed")
			}
		})
	}
}

func TestParseRingSize(t *testing.T) {
	good := []struct {
		in   string
		want int
	}{
		{"8MiB", 8 << 20},
		{"8M", 8 << 20},
		{"4096", 4096},
		{"512KiB", 512 << 10},
		{"4K", 4096},
		{"1GiB", 1 << 30},
		{"1G", 1 << 30},
		{" 16MiB ", 16 << 20},
	}
	for _, tt := range good {
		t.Run("good "+tt.in, func(t *testing.T) {
			got, err := parseRingSize(tt.in)
			if err != nil {
				t.Fatalf("parseRingSize(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("parseRingSize(%q) = %d, want %d", tt.in, got, tt.want)
			}
		})
	}
	bad := []struct{ in, why string }{
		{"3MiB", "not a power of two"},
		{"0", "zero"},
		{"-1", "negative"},
		{"x", "not a number"},
		{"", "empty"},
		{"2GiB", "above 1GiB"},
		{"2048", "below a page"},
		{"8MB", "decimal unit"},
		{"1.5M", "fraction"},
		// 2^34+1 GiB wraps to exactly 1GiB in 64-bit arithmetic.
		{"17179869185G", "GiB count overflows to 1GiB"},
		// 2^54+2^10 KiB wraps to exactly 1MiB.
		{"18014398509483008K", "KiB count overflows to 1MiB"},
	}
	for _, tt := range bad {
		t.Run("bad "+tt.why, func(t *testing.T) {
			if got, err := parseRingSize(tt.in); err == nil {
				t.Errorf("parseRingSize(%q) = %d, want an error (%s)", tt.in, got, tt.why)
			}
		})
	}
}

// runWithFiles calls run with temporary files for stdout and stderr (run
// takes *os.File, to check for a terminal) and returns what it wrote.
func runWithFiles(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	dir := t.TempDir()
	out, err := os.CreateTemp(dir, "stdout")
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	errf, err := os.CreateTemp(dir, "stderr")
	if err != nil {
		t.Fatal(err)
	}
	defer errf.Close()
	code = run(context.Background(), args, out, errf)
	o, err := os.ReadFile(out.Name())
	if err != nil {
		t.Fatal(err)
	}
	e, err := os.ReadFile(errf.Name())
	if err != nil {
		t.Fatal(err)
	}
	return code, string(o), string(e)
}

// Usage errors exit 2 with one line on stderr, before loading anything (so
// these run without root).
func TestRunUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--family", "5"}, "--family"},
		{[]string{"--nope"}, "--nope"},
		{[]string{"--ring-buffer", "3MiB"}, "--ring-buffer"},
		{[]string{"stray"}, `"stray"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, stdout, stderr := runWithFiles(t, tt.args...)
			if code != exitUsage {
				t.Errorf("exit code = %d, want %d", code, exitUsage)
			}
			if stdout != "" {
				t.Errorf("stdout = %q, want nothing: it is for events", stdout)
			}
			if strings.Count(stderr, "\n") != 1 || !strings.HasSuffix(stderr, "\n") {
				t.Errorf("stderr = %q, want exactly one line", stderr)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Errorf("stderr = %q, want it to name %s", stderr, tt.want)
			}
		})
	}
}

func TestRunHelp(t *testing.T) {
	code, stdout, stderr := runWithFiles(t, "--help")
	if code != exitOK {
		t.Errorf("exit code = %d, want %d", code, exitOK)
	}
	if stdout != "" {
		t.Errorf("stdout = %q, want nothing", stdout)
	}
	for _, want := range []string{"Usage: portlife", "--ring-buffer", "--raddr"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("usage on stderr lacks %q:\n%s", want, stderr)
		}
	}
}

// `portlife version` and `portlife --version` print one line with the
// version, the commit and the Go toolchain, on stdout, and exit 0 without
// loading anything (so they run without root).
func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}, {"trace", "--version"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			code, stdout, stderr := runWithFiles(t, args...)
			if code != exitOK {
				t.Errorf("exit code = %d, want %d (stderr %q)", code, exitOK, stderr)
			}
			f := strings.Fields(stdout)
			if len(f) != 5 || f[0] != "portlife" || f[2] != "commit" || !strings.HasPrefix(f[4], "go1.") || strings.Count(stdout, "\n") != 1 {
				t.Errorf("stdout = %q, want one line: portlife VERSION commit REV goX.Y", stdout)
			}
			if stderr != "" {
				t.Errorf("stderr = %q, want nothing", stderr)
			}
		})
	}
}

// A subcommand that does not exist is a usage error, and so is an argument
// to version.
func TestSubcommandUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"tarce"}, `unknown command "tarce"`},
		{[]string{"version", "--short"}, "version takes no arguments"},
		{[]string{"trace", "extra"}, `"extra"`},
		{[]string{"ports", "extra"}, `"extra"`},
		{[]string{"ports", "--output", "yaml"}, "--output"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, stdout, stderr := runWithFiles(t, tt.args...)
			if code != exitUsage || stdout != "" || !strings.Contains(stderr, tt.want) || strings.Count(stderr, "\n") != 1 {
				t.Errorf("exit %d, stdout %q, stderr %q: want exit %d and one line naming %s", code, stdout, stderr, exitUsage, tt.want)
			}
		})
	}
}
