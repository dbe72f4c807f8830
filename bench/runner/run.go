package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/portlife/portlife/bench/internal/truth"
)

// config is one churn workload.
type config struct {
	Name    string  `json:"name"`
	Proto   string  `json:"proto"`
	Workers int     `json:"workers"`
	Rate    float64 `json:"rate"` // total conns/s, 0 = as fast as possible
	// ServerCloses makes the server the active closer (HTTP/1.0 style).
	ServerCloses bool `json:"server_closes,omitempty"`
	// DataPath is the data path instead of churn (churn client
	// --persistent): each worker keeps one connection, or one connected
	// UDP socket, and does Size-byte round trips on it at full speed for
	// the whole run. What a tracer costs then is per packet, not per
	// connection.
	DataPath bool `json:"data_path,omitempty"`
	// Size is the bytes each way per round trip; 0 takes --size.
	Size int `json:"size,omitempty"`
}

// size is the bytes echoed per connection, or per round trip.
func (c config) size(env *benchEnv) int {
	if c.Size > 0 {
		return c.Size
	}
	return env.size
}

// Paced configurations get more workers than needed so that the pacing, not
// per-connection latency, sets the rate.
var defaultConfigs = []config{
	{Name: "tcp-w4", Proto: "tcp", Workers: 4},
	{Name: "tcp-w32", Proto: "tcp", Workers: 32},
	{Name: "tcp-r5k", Proto: "tcp", Workers: 16, Rate: 5000},
	{Name: "tcp-r20k", Proto: "tcp", Workers: 16, Rate: 20000},
	{Name: "udp-w4", Proto: "udp", Workers: 4},
	// 64-byte round trips, the size of a small RPC or a DNS query.
	{Name: "tcp-rr4", Proto: "tcp", Workers: 4, DataPath: true, Size: 64},
	{Name: "udp-rr4", Proto: "udp", Workers: 4, DataPath: true, Size: 64},
}

// extraConfigs run only when named in --configs.
var extraConfigs = []config{
	{Name: "tcp-srvclose", Proto: "tcp", Workers: 4, ServerCloses: true},
}

// benchEnv is what every run shares.
type benchEnv struct {
	dir      string
	churn    string
	duration time.Duration
	drain    time.Duration
	size     int
	sources  int
	bpfStats bool
	keep     bool
	probe    func()
}

// runResult is everything measured in one run; it is also the --json record.
type runResult struct {
	Config     string `json:"config"`
	Tracer     string `json:"tracer"`
	Run        int    `json:"run"`
	DataPath   bool   `json:"data_path,omitempty"`
	ClientPID  int    `json:"client_pid"`
	ServerPID  int    `json:"server_pid"`
	ServerAddr string `json:"server_addr"`

	Conns        int     `json:"conns"`
	Seconds      float64 `json:"seconds"`
	ConnRate     metric  `json:"conn_rate"`
	RatioVsNone  metric  `json:"ratio_vs_none"`
	ClientErrors int     `json:"client_errors"`

	// The data path's: round trips over the run's few connections, their
	// rate, and the tracer's costs per round trip. ConnRate, CPUPer100k
	// and BPFUsPerConn are left out there, having no churn to divide by.
	RoundTrips   int64  `json:"round_trips,omitempty"`
	RTRate       metric `json:"round_trip_rate"`
	CPUPer1MRT   metric `json:"tracer_cpu_s_per_1m_round_trips"`
	BPFNsPerRT   metric `json:"bpf_ns_per_round_trip"`
	BPFRunsPerRT metric `json:"bpf_runs_per_round_trip"`

	TracerCPUSec metric `json:"tracer_cpu_s"`
	CPUPer100k   metric `json:"tracer_cpu_s_per_100k"`
	PeakRSSMiB   metric `json:"tracer_peak_rss_mib"`

	BPFProgs     int    `json:"bpf_progs"`
	BPFRunTimeNs metric `json:"bpf_run_time_ns"`
	BPFRunCnt    metric `json:"bpf_run_cnt"`
	BPFUsPerConn metric `json:"bpf_us_per_conn"`
	BPFNsPerRun  metric `json:"bpf_ns_per_run"`
	// Hooks is the tracer's run count and time per program (bpf_stats).
	Hooks map[string]hookCost `json:"hooks,omitempty"`

	// Found counts pair with ground truth (right port and pid); AnyPID
	// counts ignore the pid, so found < anypid means misattribution.
	ClientFound  int    `json:"client_found"`
	ClientAnyPID int    `json:"client_found_any_pid"`
	ClientEvents int    `json:"client_events"`
	ClientPct    metric `json:"client_completeness_pct"`
	// ClientOpens and ServerOpens are, on the data path, the connections
	// whose open was found with the right ports and pid; completeness
	// there needs the open and the close (from a tracer that has opens).
	ClientOpens   int    `json:"client_opens_found,omitempty"`
	ServerOpens   int    `json:"server_opens_found,omitempty"`
	ServerFound   int    `json:"server_found"`
	ServerAnyPID  int    `json:"server_found_any_pid"`
	ServerEvents  int    `json:"server_events"`
	ServerPct     metric `json:"server_completeness_pct"`
	BadEventLines int    `json:"bad_event_lines,omitempty"`
	Lost          metric `json:"lost"`

	// The extra output of a -sink or -store tracer: what arrived (at the
	// runner's receiver, in the file, in the database) and what portlife
	// said of it in `tracing stopped`.
	OutRecords   metric `json:"output_records"` // records received; lines in the file; lifetimes in the store
	OutMB        metric `json:"output_mb"`      // their bytes (framing included); the file's or the database's size, in 10^6 bytes
	OutSeconds   metric `json:"output_seconds"` // a receiver's first byte to its last; unset for the file and the store
	OutRecPerSec metric `json:"output_records_per_s"`
	OutMBPerSec  metric `json:"output_mb_per_s"`
	// OutSent is the sink's sent count, or the store's rows_written (an
	// open and the close that replaced it are two rows written).
	OutSent metric `json:"output_sent"`
	// OutDropped is what the sink dropped (every reason) or the store
	// failed to write, plus what their stream queue dropped.
	OutDropped            metric `json:"output_dropped"`
	StoreBytesPerLifetime metric `json:"store_bytes_per_lifetime"`

	Notes []string `json:"notes,omitempty"`
	Err   string   `json:"error,omitempty"`
}

func newResult(cfg config, tr string, run int) *runResult {
	res := &runResult{
		Config: cfg.Name, Tracer: tr, Run: run, DataPath: cfg.DataPath,
		RTRate: na, CPUPer1MRT: na, BPFNsPerRT: na, BPFRunsPerRT: na,
		ConnRate: na, RatioVsNone: na, TracerCPUSec: na, CPUPer100k: na, PeakRSSMiB: na,
		BPFRunTimeNs: na, BPFRunCnt: na, BPFUsPerConn: na, BPFNsPerRun: na,
		ClientPct: na, ServerPct: na, Lost: na,
		OutRecords: na, OutMB: na, OutSeconds: na, OutRecPerSec: na, OutMBPerSec: na,
		OutSent: na, OutDropped: na, StoreBytesPerLifetime: na,
	}
	return res
}

// rate is what the run did per second: connections, or round trips on the
// data path.
func (r *runResult) rate() metric {
	if r.DataPath {
		return r.RTRate
	}
	return r.ConnRate
}

func (r *runResult) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

// runOne runs a single configuration under a single tracer (nil = none):
// server, tracer, client, drain, stop tracer, stop server, then analysis.
func runOne(ctx context.Context, env *benchEnv, cfg config, tr *tracer, run int) *runResult {
	name := "none"
	if tr != nil {
		name = tr.name
	}
	res := newResult(cfg, name, run)
	dir := filepath.Join(env.dir, fmt.Sprintf("%s-%s-%d", cfg.Name, name, run))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		res.Err = fmt.Sprintf("create run dir: %v", err)
		return res
	}
	if err := execute(ctx, env, cfg, tr, dir, res); err != nil {
		res.Err = err.Error()
	}
	// A traced run leaves hundreds of MB of events; keep them only on request.
	if !env.keep {
		os.RemoveAll(dir)
	}
	return res
}

func execute(ctx context.Context, env *benchEnv, cfg config, tr *tracer, dir string, res *runResult) error {
	srv, addr, err := startServer(ctx, env, cfg, dir)
	if err != nil {
		return err
	}
	defer srv.kill()
	res.ServerPID, res.ServerAddr = srv.pid(), addr.String()

	var tp *tracedProc
	if tr != nil {
		if tp, err = startTracer(ctx, env, tr, dir); err != nil {
			return err
		}
		defer tp.release()
	}

	cli, err := runClient(ctx, env, cfg, addr, dir)
	if err != nil {
		return err
	}
	res.ClientPID = cli.pid()

	// Let the tracer catch up: server-side closes trail the client's, and
	// tcplife only polls its perf buffer every 100ms and exits without a
	// final drain.
	sleepCtx(ctx, env.drain)
	if tp != nil {
		if err := tp.finish(res); err != nil {
			res.note("%v", err)
		}
	}
	if err := srv.stop(syscall.SIGTERM, 5*time.Second); err != nil {
		res.note("server: %v", err)
	}
	return analyze(env, cfg, tr, dir, addr, res)
}

// serverArgv is the churn server's command line for cfg.
func serverArgv(env *benchEnv, cfg config, ready string) []string {
	argv := []string{env.churn, "server", "--proto", cfg.Proto, "--addr", "127.0.0.1:0",
		"--ready-file", ready, "--bufsize", strconv.Itoa(max(4096, cfg.size(env))),
		"--handlers", strconv.Itoa(max(64, 2*cfg.Workers))}
	if cfg.ServerCloses {
		argv = append(argv, "--active-close", strconv.Itoa(cfg.size(env)))
	}
	if cfg.DataPath && cfg.Proto == "tcp" {
		argv = append(argv, "--nodelay")
	}
	return argv
}

// clientArgv is the churn client's command line for cfg.
func clientArgv(env *benchEnv, cfg config, addr netip.AddrPort, dir string) []string {
	argv := []string{env.churn, "client", "--proto", cfg.Proto, "--target", addr.String(),
		"--workers", strconv.Itoa(cfg.Workers), "--duration", env.duration.String(),
		"--size", strconv.Itoa(cfg.size(env)),
		"--sources", strconv.Itoa(env.sources), "--truth", filepath.Join(dir, "truth.bin")}
	if cfg.DataPath {
		return append(argv, "--persistent")
	}
	argv = append(argv, "--rate", strconv.FormatFloat(cfg.Rate, 'f', -1, 64))
	if cfg.ServerCloses {
		argv = append(argv, "--wait-eof")
	}
	return argv
}

func startServer(ctx context.Context, env *benchEnv, cfg config, dir string) (*child, netip.AddrPort, error) {
	ready := filepath.Join(dir, "server.addr")
	argv := serverArgv(env, cfg, ready)
	c, err := startChild(ctx, "churn server", argv, filepath.Join(dir, "server.stdout"), filepath.Join(dir, "server.stderr"))
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	var addr netip.AddrPort
	err = c.waitFor(ctx, "ready file", 10*time.Second, func() bool {
		data, err := os.ReadFile(ready)
		if err != nil {
			return false
		}
		addr, err = netip.ParseAddrPort(strings.TrimSpace(string(data)))
		return err == nil
	})
	if err != nil {
		c.kill()
		return nil, netip.AddrPort{}, err
	}
	return c, addr, nil
}

// runClient runs the churn client to completion.
func runClient(ctx context.Context, env *benchEnv, cfg config, addr netip.AddrPort, dir string) (*child, error) {
	argv := clientArgv(env, cfg, addr, dir)
	c, err := startChild(ctx, "churn client", argv, filepath.Join(dir, "client.stdout"), filepath.Join(dir, "client.stderr"))
	if err != nil {
		return nil, err
	}
	if err := c.wait(env.duration + 60*time.Second); err != nil {
		return c, err
	}
	return c, nil
}

// tracedProc is a running tracer plus its counters sampled at readiness.
type tracedProc struct {
	tr        *tracer
	c         *child
	out       output // the tracer's extra output; nil for none
	dir       string
	progs0    map[uint32]progStat
	cpu0      float64
	stdoutPth string
}

func startTracer(ctx context.Context, env *benchEnv, tr *tracer, dir string) (*tracedProc, error) {
	argv := append([]string{tr.bin}, tr.args...)
	var out output
	if tr.output != nil {
		var err error
		if out, err = tr.output(dir); err != nil {
			return nil, err
		}
		argv = append(argv, out.flags()...)
	}
	stdout := filepath.Join(dir, tr.name+".stdout")
	c, err := startChild(ctx, tr.name, argv, stdout, filepath.Join(dir, tr.name+".stderr"))
	if err != nil {
		if out != nil {
			out.close()
		}
		return nil, err
	}
	tp := &tracedProc{tr: tr, c: c, out: out, dir: dir, stdoutPth: stdout}
	if err := tr.waitReady(ctx, c, env); err != nil {
		tp.release()
		return nil, err
	}
	tp.progs0, _ = tracerProgs(c.pid())
	// Startup (BTF parsing, verification) is excluded: the interesting cost
	// is per connection, and it is amortised over any real run length.
	tp.cpu0, _ = procCPU(c.pid())
	return tp, nil
}

// release kills the tracer if it still runs and stops its output's
// receiver; after finish, it has nothing left to do.
func (tp *tracedProc) release() {
	tp.c.kill()
	if tp.out != nil {
		tp.out.close()
	}
}

// finish samples the tracer's counters, stops it and fills the tracer
// columns of res, and the output columns once its output has everything.
func (tp *tracedProc) finish(res *runResult) error {
	pid := tp.c.pid()
	progs1, err := tracerProgs(pid)
	if err != nil {
		res.note("bpf stats: %v", err)
	}
	hwm, hwmOK := procHWMKiB(pid)
	res.BPFProgs = len(progs1)
	if len(progs1) > 0 {
		rt, rc := progDelta(tp.progs0, progs1)
		res.BPFRunTimeNs, res.BPFRunCnt = metric(rt), metric(rc)
		res.Hooks = hookDeltas(tp.progs0, progs1)
	}

	stopErr := tp.c.stop(syscall.SIGINT, 30*time.Second)
	if ru := tp.c.rusage(); ru != nil {
		cpu := float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
		res.TracerCPUSec = metric(cpu - tp.cpu0)
		res.PeakRSSMiB = metric(float64(ru.Maxrss) / 1024) // Maxrss is in KiB
	} else if hwmOK {
		res.PeakRSSMiB = metric(float64(hwm) / 1024)
	}
	if n, ok := tp.tr.lost(tp.stdoutPth, tp.c.stderr); ok {
		res.Lost = metric(n)
	}
	if tp.out != nil {
		st, err := parseFile(tp.c.stderr, parsePortlifeStopped)
		if err != nil {
			res.note("read %s stderr: %v", tp.tr.name, err)
		}
		if err := tp.out.collect(res, st); err != nil {
			res.note("output: %v", err)
		}
	}
	return stopErr
}

// analyze reads ground truth and the tracer's output and derives the
// per-connection figures.
func analyze(env *benchEnv, cfg config, tr *tracer, dir string, addr netip.AddrPort, res *runResult) error {
	h, ports, err := truth.ReadFile(filepath.Join(dir, "truth.bin"))
	if err != nil {
		return err
	}
	if h.PID != res.ClientPID {
		res.note("truth pid %d differs from client pid %d", h.PID, res.ClientPID)
	}
	if len(h.ErrorKinds) > 0 {
		res.note("client errors: %v", h.ErrorKinds)
	}
	if cfg.DataPath && h.RoundTrips == 0 {
		res.note("the client did no round trip")
	}
	fillRates(res, h, tr != nil, env.bpfStats)
	if tr == nil {
		return nil
	}
	if !tr.supports(cfg.Proto) {
		res.note("%s does not trace %s; completeness not applicable", tr.name, cfg.Proto)
		return nil
	}
	spec := matchSpec{proto: cfg.Proto, clientPID: res.ClientPID, serverPID: res.ServerPID, serverPort: addr.Port(),
		opens: cfg.DataPath && tr.opens}
	f, err := os.Open(filepath.Join(dir, tr.name+".stdout"))
	if err != nil {
		return fmt.Errorf("open tracer output: %w", err)
	}
	defer f.Close()
	ec, err := tr.parse(f, spec)
	if err != nil {
		return err
	}
	fillCompleteness(res, countPorts(ports), ec, spec)
	return nil
}

// fillRates divides what the run did and what the tracer spent by the
// connections, or on the data path by the round trips. BPF time needs
// bpf_stats: without it the kernel counts neither time nor runs.
func fillRates(res *runResult, h truth.Header, traced, bpfStats bool) {
	res.Conns, res.Seconds, res.ClientErrors, res.RoundTrips = h.Conns, h.Seconds, h.Errors, h.RoundTrips
	if res.DataPath {
		res.RTRate = ratio(float64(h.RoundTrips), h.Seconds)
	} else {
		res.ConnRate = ratio(float64(h.Conns), h.Seconds)
	}
	if !traced {
		return
	}
	if res.DataPath {
		res.CPUPer1MRT = ratio(float64(res.TracerCPUSec)*1e6, float64(h.RoundTrips))
		res.BPFNsPerRT = ratio(float64(res.BPFRunTimeNs), float64(h.RoundTrips))
		res.BPFRunsPerRT = ratio(float64(res.BPFRunCnt), float64(h.RoundTrips))
	} else {
		res.CPUPer100k = ratio(float64(res.TracerCPUSec)*1e5, float64(h.Conns))
		res.BPFUsPerConn = ratio(float64(res.BPFRunTimeNs)/1e3, float64(h.Conns))
	}
	res.BPFNsPerRun = ratio(float64(res.BPFRunTimeNs), float64(res.BPFRunCnt))
	fillOutputRates(res)
	if !bpfStats {
		res.BPFUsPerConn, res.BPFNsPerRun, res.BPFNsPerRT, res.BPFRunsPerRT = na, na, na, na
	}
}

// fillOutputRates turns what reached an output into rates: over a
// receiver's first byte to its last (its throughput), else over the churn
// (the file's and the store's mean rate while the load ran). The store's
// rate is of rows written, the rows per second it kept up with.
func fillOutputRates(res *runResult) {
	secs := res.OutSeconds
	if !secs.valid() {
		secs = metric(res.Seconds)
	}
	recs := res.OutRecords
	if res.Tracer == storeTracer {
		recs = res.OutSent
	}
	res.OutRecPerSec = ratio(float64(recs), float64(secs))
	res.OutMBPerSec = ratio(float64(res.OutMB), float64(secs))
}

// fillCompleteness pairs the truth's connections with the tracer's closes,
// and with spec.opens, with its opens too: a connection counts as found
// only when both are, with the right ports and pid.
func fillCompleteness(res *runResult, want *portCounts, ec *eventCounts, spec matchSpec) {
	n := float64(res.Conns)
	res.BadEventLines = ec.badLines
	res.ClientFound = matchMultiset(want, &ec.client)
	res.ClientAnyPID = matchMultiset(want, &ec.clientAnyPID)
	res.ClientEvents = total(&ec.client)
	if spec.opens {
		res.ClientOpens = matchMultiset(want, &ec.clientOpen)
		res.ClientFound = matchMultiset(want, both(&ec.client, &ec.clientOpen))
	}
	res.ClientPct = ratio(100*float64(res.ClientFound), n)
	// A UDP echo server has one socket for everyone, so there is no
	// per-connection server side to find.
	if spec.proto != "tcp" {
		return
	}
	res.ServerFound = matchMultiset(want, &ec.server)
	res.ServerAnyPID = matchMultiset(want, &ec.serverAnyPID)
	res.ServerEvents = total(&ec.server)
	if spec.opens {
		res.ServerOpens = matchMultiset(want, &ec.serverOpen)
		res.ServerFound = matchMultiset(want, both(&ec.server, &ec.serverOpen))
	}
	res.ServerPct = ratio(100*float64(res.ServerFound), n)
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
