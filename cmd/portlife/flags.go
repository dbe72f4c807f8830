package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/portlife/portlife/internal/event"
)

// Flag groups shared by the subcommands. Each value is parsed and checked
// by its pflag.Value as it is read, so a mistake is a one-line error naming
// the flag, before anything is loaded into the kernel.

// addFilterFlags defines the flags that select events, on every subcommand
// that filters (trace now; top and query next). The rules behind them live
// in internal/event, with Filter.Validate.
func addFilterFlags(fs *pflag.FlagSet, f *event.Filter) {
	fs.Var(event.KindsValue(&f.Kinds), "events", "event kinds to print: open, close, connect_failed, bind_failed (default all)")
	fs.Var(event.ProtosValue(&f.Protos), "proto", "protocols to trace: tcp, udp (default both)")
	fs.Var(event.PIDValue{P: &f.PID}, "pid", "only this process (its PID, the thread group id)")
	fs.Var(event.CommValue{P: &f.Comm}, "comm", "only processes with this exact command name (at most 15 bytes, as in /proc/PID/comm)")
	fs.Var(event.PortRangesValue(&f.LocalPorts, "local port ranges"), "lport", "only these local ports or ranges, e.g. 443,8000-8999 (repeatable, up to 8)")
	fs.Var(event.PortRangesValue(&f.RemotePorts, "remote port ranges"), "rport", "only these remote ports or ranges (repeatable, up to 8)")
	fs.Var(event.NetsValue(&f.RemoteNets), "raddr", "only remote addresses in this CIDR or equal to this address, e.g. 10.0.0.0/8 or ::1 (repeatable, up to 64)")
	fs.Var(event.FamilyValue{P: &f.Family}, "family", "only IPv4 (4) or IPv6 (6)")
	fs.Var(event.DirectionValue{P: &f.Direction}, "direction", "only outbound (we connected) or inbound (we accepted)")
	fs.BoolVar(&f.EphemeralOnly, "ephemeral-only", false, "only connections whose ephemeral-side port is in their network namespace's ip_local_port_range")
	fs.Var(event.MinDurationValue{P: &f.MinDuration}, "min-duration", "only close events of lifetimes at least this long, e.g. 10ms")
	fs.Var(event.UnitsValue(&f.Units), "unit", "only processes in this systemd unit, e.g. nginx.service (nginx means nginx.service; repeatable)")
	fs.Var(event.ContainersValue(&f.Containers), "container", "only processes in this container: its id, or its first 12 or more hex digits (repeatable)")
	fs.Var(event.NetNSValue{P: &f.NetNS}, "netns", "only sockets in this network namespace: its inode (the netns field) or a path such as /run/netns/NAME or /proc/PID/ns/net (repeatable)")
}

// logOptions are the diagnostics flags every subcommand takes.
type logOptions struct {
	format string // console or json
	debug  bool
}

func addLogFlags(fs *pflag.FlagSet, o *logOptions) {
	fs.Var(&choiceValue{p: &o.format, choices: []string{"console", "json"}}, "log-format", "diagnostics on stderr: console or json (default console on a terminal, json otherwise)")
	fs.BoolVar(&o.debug, "debug", false, "log debug diagnostics, such as the verifier's log")
}

// choiceValue is one of a fixed set of words.
type choiceValue struct {
	p       *string
	choices []string
}

func (v *choiceValue) Set(s string) error {
	for _, c := range v.choices {
		if s == c {
			*v.p = s
			return nil
		}
	}
	return fmt.Errorf("%q: want %s", s, strings.Join(v.choices, " or "))
}

func (v *choiceValue) String() string { return *v.p }
func (v *choiceValue) Type() string   { return strings.Join(v.choices, "|") }

// durationValue is a duration that cannot be negative.
type durationValue struct{ p *time.Duration }

func (v durationValue) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration such as 100ms or 10s", s)
	}
	if d < 0 {
		return fmt.Errorf("%v: cannot be negative", d)
	}
	*v.p = d
	return nil
}

func (v durationValue) String() string { return v.p.String() }
func (v durationValue) Type() string   { return "duration" }

// niceValue is a nice value, -20 to 19.
type niceValue struct{ p *int }

func (v niceValue) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < -20 || n > 19 {
		return fmt.Errorf("%q: want a nice value from -20 to 19", s)
	}
	*v.p = n
	return nil
}

func (v niceValue) String() string { return strconv.Itoa(*v.p) }
func (v niceValue) Type() string   { return "nice" }

// countValue is a count of things from 1 to max.
type countValue struct {
	p   *int
	max int
}

func (v countValue) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > v.max {
		return fmt.Errorf("%q: want a count from 1 to %d", s, v.max)
	}
	*v.p = n
	return nil
}

func (v countValue) String() string { return strconv.Itoa(*v.p) }
func (v countValue) Type() string   { return "count" }

// ringSizeValue is the ring buffer's size in bytes, written like 4MiB.
type ringSizeValue struct{ p *int }

func (v ringSizeValue) Set(s string) error {
	n, err := parseRingSize(s)
	if err != nil {
		return err
	}
	*v.p = n
	return nil
}

func (v ringSizeValue) String() string {
	switch n := *v.p; {
	case n >= 1<<30 && n%(1<<30) == 0:
		return strconv.Itoa(n>>30) + "GiB"
	case n >= 1<<20 && n%(1<<20) == 0:
		return strconv.Itoa(n>>20) + "MiB"
	case n >= 1<<10 && n%(1<<10) == 0:
		return strconv.Itoa(n>>10) + "KiB"
	}
	return strconv.Itoa(*v.p)
}

func (v ringSizeValue) Type() string { return "size" }

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

// defaultTo fills in a format flag left unset: one for people on a
// terminal, one for machines otherwise.
func defaultTo(v, onTerminal, otherwise string, terminal bool) string {
	switch {
	case v != "":
		return v
	case terminal:
		return onTerminal
	}
	return otherwise
}
