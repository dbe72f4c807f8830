package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/event"
	"github.com/portlife/portlife/internal/ports"
	"github.com/portlife/portlife/internal/stream"
)

// Port accounting: in `portlife trace`, a stream subscriber that keeps every
// key's usage and publishes pressure events; `portlife ports` runs the same
// accounting once, over the sockets that exist now.

// portsOptions are the accounting flags of `portlife trace`.
type portsOptions struct {
	thresholds []float64
	maxKeys    int
	reconcile  time.Duration
	off        bool
}

func defaultPortsOptions() portsOptions {
	return portsOptions{thresholds: event.DefaultThresholds, maxKeys: 4096, reconcile: 30 * time.Second}
}

func addPortsFlags(fs *pflag.FlagSet, o *portsOptions) {
	fs.Var(event.ThresholdsValue{P: &o.thresholds}, "pressure-thresholds", "port pressure levels (percent of a key's capacity) whose crossing sends a pressure event; falling back under the first is sent too")
	fs.Var(countValue{&o.maxKeys, 1 << 24}, "port-keys", "most keys (destination, local address) port accounting keeps; the least pressed make room, and are counted")
	fs.Var(durationValue{&o.reconcile}, "port-reconcile", "how often port accounting checks its count against the kernel's sockets (sock_diag); 0 never")
	fs.BoolVar(&o.off, "no-port-accounting", false, "send no pressure events, and keep no per-key accounting")
}

// positiveValue is a count, at least 1.
// accountingQueue is the accountant's queue, in events (344 bytes each,
// 11 MB once it has cycled). At this 2-CPU host's TCP churn limit (14,000
// connections a second, 28,000 events a second for accounting) 8,192, under
// 0.3 s, lost a few hundred events in one run of three to a garbage
// collection or the churn's own CPU; 32,768 is a second of them. What a full
// queue drops is counted as the consumer "ports" drops, in tracing stopped.
const accountingQueue = 32 << 10

// startAccounting subscribes port accounting to s, with the sockets that
// exist now already counted, and reconciles it with the kernel every
// o.reconcile until stop is called. Call it after the tracer is attached (so
// a socket that ends after the dump is seen ending) and before Run; call
// stop before the stream is closed.
// kernelCookies says whether the tracer's events carry the kernel's socket
// cookies, which reconciliation matches sock_diag's by.
func startAccounting(s *stream.Stream, o portsOptions, f *event.Filter, kernelCookies bool, log *zap.Logger) (a *ports.Accountant, stop func()) {
	stop = func() {}
	if o.off {
		return nil, stop
	}
	if !f.WantsKind(event.KindOpen) || !f.WantsKind(event.KindClose) {
		// Without both it would count ports it never sees released.
		log.Warn("port accounting is off: it counts ports from open and close events, which --events leaves out")
		return nil, stop
	}
	a = ports.New(ports.Config{Thresholds: o.thresholds, MaxKeys: o.maxKeys, Publish: s.Publish, Keep: keepExisting(f)})
	socks, _, err := ports.Dump(ports.Namespaces(), true)
	if err != nil {
		log.Warn("port accounting: some network namespaces' sockets could not be listed; their existing ports are counted from their next event: "+dumpAdvice(err), zap.Error(err))
	}
	a.Prime(socks) // the listing is garbage now: trace hands it back (debug.FreeOSMemory)
	s.Subscribe("ports", a, accountingQueue)
	if o.reconcile > 0 && !kernelCookies {
		// Before Linux 5.12 a TCP socket's cookie in events may be its
		// address, which no sock_diag listing has: every tracked socket
		// would look gone.
		log.Info("port accounting does not reconcile with sock_diag: this kernel's tracing programs cannot ask for socket cookies (Linux 5.12)")
		return a, stop
	}
	if o.reconcile <= 0 {
		return a, stop
	}
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(o.reconcile)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				if err := a.Reconcile(); err != nil {
					log.Debug("port accounting: reconciling with the kernel", zap.Error(err))
				}
			}
		}
	}()
	return a, func() {
		close(done)
		<-finished
	}
}

// accountingSummary logs what accounting left out, at exit.
func accountingSummary(a *ports.Accountant, log *zap.Logger) {
	if a == nil {
		return
	}
	st := a.Stats()
	log.Info("port accounting",
		zap.Uint64("pressure_events", st.Published),
		zap.Uint64("pressure_lost", st.PublishFailed),
		zap.Uint64("keys_left_out", st.KeysLeftOut),
		zap.Uint64("sockets_left_out", st.SocketsLeftOut),
		zap.Uint64("reconciled_gone", st.ReconciledGone),
		zap.Uint64("reconciled_found", st.ReconciledFound),
		zap.Uint64("sysctl_errors", st.SysctlErrors))
}

// portsCmdOptions is the parsed command line of `portlife ports`.
type portsCmdOptions struct {
	output string
	log    logOptions
}

func runPorts(_ context.Context, args []string, stdout, stderr *os.File) int {
	fs := pflag.NewFlagSet("portlife ports", pflag.ContinueOnError)
	fs.SortFlags = false
	var o portsCmdOptions
	fs.Var(&choiceValue{p: &o.output, choices: []string{"text", "json"}}, "output", "format: text or json (default text on a terminal, json otherwise)")
	addLogFlags(fs, &o.log)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: portlife ports [flags]\n\nShows every port key (destination, bind pool, UDP local address) with its usage, capacity and pressure, most pressed first. Needs root to see other network namespaces.\n\nFlags:\n%s", fs.FlagUsages())
	}
	switch err := fs.Parse(args); {
	case errors.Is(err, pflag.ErrHelp):
		return exitOK
	case err != nil:
		fmt.Fprintf(stderr, "portlife ports: %v (see portlife ports --help)\n", err)
		return exitUsage
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "portlife ports: unexpected argument %q: it takes only flags (see portlife ports --help)\n", fs.Arg(0))
		return exitUsage
	}
	o.output = defaultTo(o.output, "text", "json", isTerminal(stdout))
	o.log.format = defaultTo(o.log.format, "console", "json", isTerminal(stderr))
	log := newLogger(stderr, o.log)
	defer log.Sync()

	a := ports.New(ports.Config{})
	socks, listed, err := ports.Dump(ports.Namespaces(), true)
	if err != nil {
		log.Warn("some network namespaces' sockets could not be listed: "+dumpAdvice(err), zap.Error(err))
	}
	a.Prime(socks)
	reports := a.Snapshot()
	if len(reports) == 0 {
		// An empty output alone cannot tell "no port is held" from
		// "nothing could be read".
		log.Info("no ephemeral port is held in the network namespaces listed", zap.Int("namespaces", len(listed)))
	}
	if o.output == "json" {
		err = writePortsJSON(stdout, reports)
	} else {
		err = writePortsText(stdout, reports, time.Now())
	}
	if err != nil {
		log.Error("writing the snapshot", zap.Error(err))
		return exitError
	}
	return exitOK
}

// dumpAdvice says what to do about a failed sock_diag dump. ENOENT: the
// kernel has no TCP or UDP handler for it, and could not load the module
// (no modprobe, or no module aliases: a minimal guest).
func dumpAdvice(err error) string {
	if errors.Is(err, unix.ENOENT) {
		return "load the tcp_diag and udp_diag modules (modprobe tcp_diag udp_diag)"
	}
	return "run as root to see them all"
}

// portsJSON is one key of `portlife ports --output json`, one object a line.
type portsJSON struct {
	Mechanism    string    `json:"mechanism"`
	Proto        string    `json:"proto"`
	NetNS        uint32    `json:"netns"`
	Laddr        string    `json:"laddr"`
	Raddr        string    `json:"raddr,omitempty"`
	Rport        uint16    `json:"rport,omitempty"`
	Used         int       `json:"used"`
	Capacity     int       `json:"capacity"`
	Pressure     float64   `json:"pressure"`
	TimeWait     int       `json:"time_wait_ports"`
	NextExpiryMs *float64  `json:"next_expiry_ms,omitempty"`
	Top          []topJSON `json:"top"`
}

type topJSON struct {
	PID               uint32 `json:"pid"`
	Comm              string `json:"comm"`
	Ports             int    `json:"ports"`
	BindBeforeConnect int    `json:"bind_before_connect"`
}

func toJSON(r *ports.Report, now time.Time) portsJSON {
	j := portsJSON{
		Mechanism: r.Mechanism.String(),
		Proto:     "tcp",
		NetNS:     r.NetNS,
		Laddr:     r.Local.String(),
		Used:      r.Used,
		Capacity:  r.Capacity,
		Pressure:  float64(int64(r.Ratio*1000+0.5)) / 1000,
		TimeWait:  r.TimeWait,
		Top:       []topJSON{},
	}
	if r.Mechanism == event.MechanismUDP {
		j.Proto = "udp"
	}
	if r.Remote.IsValid() {
		j.Raddr, j.Rport = r.Remote.Addr().String(), r.Remote.Port()
	}
	if !r.NextExpiry.IsZero() {
		ms := float64(r.NextExpiry.Sub(now).Milliseconds())
		j.NextExpiryMs = &ms
	}
	for _, t := range r.Top {
		j.Top = append(j.Top, topJSON{PID: t.PID, Comm: t.Comm.String(), Ports: t.Ports, BindBeforeConnect: t.BindBeforeConnect})
	}
	return j
}

func writePortsJSON(w io.Writer, reports []ports.Report) error {
	now := time.Now()
	var b []byte
	for i := range reports {
		line, err := json.Marshal(toJSON(&reports[i], now))
		if err != nil {
			return err
		}
		b = append(append(b, line...), '\n')
	}
	_, err := w.Write(b)
	return err
}

func writePortsText(w io.Writer, reports []ports.Report, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MECHANISM\tNETNS\tLOCAL\tDESTINATION\tUSED\tCAPACITY\tPRESSURE\tTIME_WAIT\tNEXT_EXPIRY\tTOP")
	for i := range reports {
		r := &reports[i]
		dest := "*"
		if r.Remote.IsValid() {
			dest = r.Remote.String()
		}
		next := "-"
		if !r.NextExpiry.IsZero() {
			next = r.NextExpiry.Sub(now).Round(100 * time.Millisecond).String()
		}
		top := "-"
		if len(r.Top) > 0 {
			top = fmt.Sprintf("%s[%d]=%d", r.Top[0].Comm.String(), r.Top[0].PID, r.Top[0].Ports)
			if r.Top[0].BindBeforeConnect > 0 {
				top += fmt.Sprintf(" (bind_before_connect=%d)", r.Top[0].BindBeforeConnect)
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%d\t%.1f%%\t%d\t%s\t%s\n", r.Mechanism, r.NetNS, addrString(r.Local), dest,
			r.Used, r.Capacity, r.Ratio*100, r.TimeWait, next, top)
	}
	return tw.Flush()
}

func addrString(a netip.Addr) string {
	if a.IsUnspecified() {
		return "*"
	}
	return a.String()
}

// keepExisting applies the trace's filters, as far as a socket from before
// start tells them, to the sockets counted at start: the trace will see the
// end of no socket its filters leave out. A TIME_WAIT has no process, so a
// --pid or --comm filter leaves the TIME_WAITs from before start out.
func keepExisting(f *event.Filter) func(*ports.Existing) bool {
	inRanges := func(p uint16, rs []event.PortRange) bool {
		if len(rs) == 0 {
			return true
		}
		for _, r := range rs {
			if p >= r.Lo && p <= r.Hi {
				return true
			}
		}
		return false
	}
	return func(x *ports.Existing) bool {
		if f.PID != 0 && x.PID != f.PID || f.Comm != "" && x.Comm.String() != f.Comm {
			return false
		}
		if !f.WantsProto(x.Proto) || f.Family != 0 && x.Family != f.Family {
			return false
		}
		// --netns: the trace sees the end of no other namespace's socket.
		if len(f.NetNS) > 0 && !slices.Contains(f.NetNS, x.NetNS) {
			return false
		}
		if !inRanges(x.Local.Port(), f.LocalPorts) || !inRanges(x.Remote.Port(), f.RemotePorts) {
			return false
		}
		if len(f.RemoteNets) == 0 {
			return true
		}
		for _, n := range f.RemoteNets {
			if n.Contains(x.Remote.Addr()) {
				return true
			}
		}
		return false
	}
}
