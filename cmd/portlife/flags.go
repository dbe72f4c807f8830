package main

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"github.com/portlife/portlife/tracer"
)

// options is the parsed command line.
type options struct {
	output    string // text or json
	logFormat string // console or json
	debug     bool
	cfg       tracer.Config
}

// errHelp is returned for --help: usage was printed, exit 0.
var errHelp = pflag.ErrHelp

// parseFlags reads args into options. Every value is checked here, so a
// mistake is reported before anything is loaded into the kernel.
func parseFlags(args []string, stdoutIsTerminal, stderrIsTerminal bool, usage func(*pflag.FlagSet)) (options, error) {
	fs := pflag.NewFlagSet("portlife", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.Usage = func() { usage(fs) }

	var (
		o         = options{cfg: tracer.DefaultConfig()}
		f         = &o.cfg.Filter
		events    = fs.StringSlice("events", nil, "event kinds to print: open, close, connect_failed (default all)")
		protos    = fs.StringSlice("proto", nil, "protocols to trace: tcp, udp (default both)")
		pid       = fs.Uint32("pid", 0, "only this process (its PID, the thread group id)")
		comm      = fs.String("comm", "", "only processes with this exact command name (at most 15 bytes, as in /proc/PID/comm)")
		lports    = fs.StringSlice("lport", nil, "only these local ports or ranges, e.g. 443,8000-8999 (repeatable)")
		rports    = fs.StringSlice("rport", nil, "only these remote ports or ranges (repeatable)")
		raddrs    = fs.StringSlice("raddr", nil, "only remote addresses in this CIDR or address, e.g. 10.0.0.0/8 or ::1 (repeatable)")
		family    = fs.String("family", "", "only IPv4 (4) or IPv6 (6)")
		direction = fs.String("direction", "", "only outbound (we connected) or inbound (we accepted)")
		ringSize  = fs.String("ring-buffer", "4MiB", "kernel-to-user buffer: a power of two, e.g. 4MiB, 16MiB")
	)
	fs.StringVar(&o.output, "output", "", "event format: text or json (default text on a terminal, json otherwise)")
	fs.BoolVar(&f.EphemeralOnly, "ephemeral-only", false, "only connections whose ephemeral-side port is in ip_local_port_range")
	fs.DurationVar(&f.MinDuration, "min-duration", 0, "only close events of lifetimes at least this long, e.g. 10ms")
	fs.DurationVar(&o.cfg.FlushInterval, "flush-interval", o.cfg.FlushInterval, "longest an event waits before it is written; 0 writes each at once, at more CPU")
	fs.DurationVar(&o.cfg.StatsInterval, "stats-interval", o.cfg.StatsInterval, "how often to warn while events are being lost; 0 only at exit")
	fs.IntVar(&o.cfg.ReaderNice, "reader-nice", o.cfg.ReaderNice, "nice value of the thread that reads and writes events, so a CPU-saturated host cannot starve it; 0 leaves it unchanged")
	fs.StringVar(&o.logFormat, "log-format", "", "diagnostics on stderr: console or json (default console on a terminal, json otherwise)")
	fs.BoolVar(&o.debug, "debug", false, "log debug diagnostics, such as the verifier's log")

	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q: portlife takes only flags", fs.Arg(0))
	}
	var errs []error
	check := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}

	o.output = defaultTo(o.output, "text", "json", stdoutIsTerminal)
	check(oneOf("--output", o.output, "text", "json"))
	o.logFormat = defaultTo(o.logFormat, "console", "json", stderrIsTerminal)
	check(oneOf("--log-format", o.logFormat, "console", "json"))

	for _, s := range *events {
		k, err := tracer.ParseKind(s)
		check(flagErr("--events", err))
		f.Kinds = append(f.Kinds, k)
	}
	for _, s := range *protos {
		switch s {
		case "tcp":
			f.Protos = append(f.Protos, tracer.ProtoTCP)
		case "udp":
			f.Protos = append(f.Protos, tracer.ProtoUDP)
		default:
			check(fmt.Errorf("--proto %q: want tcp or udp", s))
		}
	}
	f.PID = *pid
	f.Comm = *comm
	var err error
	f.LocalPorts, err = parsePortRanges(*lports)
	check(flagErr("--lport", err))
	f.RemotePorts, err = parsePortRanges(*rports)
	check(flagErr("--rport", err))
	f.RemoteNets, err = parseNets(*raddrs)
	check(flagErr("--raddr", err))
	switch *family {
	case "":
	case "4", "ipv4":
		f.Family = 4
	case "6", "ipv6":
		f.Family = 6
	default:
		check(fmt.Errorf("--family %q: want 4 or 6", *family))
	}
	switch *direction {
	case "":
	case "outbound":
		f.Direction = tracer.DirectionOutbound
	case "inbound":
		f.Direction = tracer.DirectionInbound
	default:
		check(fmt.Errorf("--direction %q: want outbound or inbound", *direction))
	}
	o.cfg.RingBufferSize, err = parseRingSize(*ringSize)
	check(flagErr("--ring-buffer", err))
	if o.cfg.ReaderNice < -20 || o.cfg.ReaderNice > 19 {
		check(fmt.Errorf("--reader-nice %d: want -20 to 19", o.cfg.ReaderNice))
	}
	if o.cfg.FlushInterval < 0 || o.cfg.StatsInterval < 0 {
		check(errors.New("--flush-interval and --stats-interval cannot be negative"))
	}
	if len(f.Comm) > 15 {
		check(fmt.Errorf("--comm %q: at most 15 bytes, as the kernel keeps it", f.Comm))
	}
	if f.MinDuration < 0 {
		check(fmt.Errorf("--min-duration %v: cannot be negative", f.MinDuration))
	}
	for _, l := range []struct {
		flag string
		n    int
		max  int
	}{{"--lport", len(f.LocalPorts), tracer.MaxPortRanges}, {"--rport", len(f.RemotePorts), tracer.MaxPortRanges}, {"--raddr", len(f.RemoteNets), tracer.MaxRemoteNets}} {
		if l.n > l.max {
			check(fmt.Errorf("%s: %d values, at most %d", l.flag, l.n, l.max))
		}
	}
	check(f.Validate()) // the tracer's own check, should the limits above drift
	if len(errs) > 0 {
		return o, errs[0] // one line, the first mistake
	}
	return o, nil
}

func defaultTo(v, onTerminal, otherwise string, terminal bool) string {
	switch {
	case v != "":
		return v
	case terminal:
		return onTerminal
	}
	return otherwise
}

func oneOf(flag, v string, allowed ...string) error {
	for _, a := range allowed {
		if v == a {
			return nil
		}
	}
	return fmt.Errorf("%s %q: want %s", flag, v, strings.Join(allowed, " or "))
}

func flagErr(flag string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", flag, err)
}

func parsePortRanges(values []string) ([]tracer.PortRange, error) {
	var out []tracer.PortRange
	for _, v := range values {
		r, err := tracer.ParsePortRange(v)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// parseNets reads CIDRs; a bare address is a network of one.
func parseNets(values []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, v := range values {
		if p, err := netip.ParsePrefix(v); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(v)
		if err != nil {
			return nil, fmt.Errorf("%q is neither a CIDR (10.0.0.0/8, fd00::/8) nor an address", v)
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// parseRingSize reads "8MiB", "8M", "512KiB" or a byte count.
func parseRingSize(s string) (int, error) {
	num, mult := strings.TrimSpace(s), 1
	for _, u := range []struct {
		suffix string
		mult   int
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}} {
		if n, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = n, u.mult
			break
		}
	}
	n, err := strconv.Atoi(num)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a size such as 8MiB", s)
	}
	if n > (1<<30)/mult {
		return 0, fmt.Errorf("%s is above 1GiB", s)
	}
	size := n * mult
	if size&(size-1) != 0 || size < 4096 || size > 1<<30 {
		return 0, fmt.Errorf("%s is not a power of two between 4KiB and 1GiB", s)
	}
	return size, nil
}
