// Command runner benchmarks connection tracers against connection churn: it
// runs the churn generator (bench/churn) with no tracer, with portlife and
// with libbpf-tools tcplife, interleaved run by run, and prints a table of
// connection rate, tracer CPU and memory, in-kernel BPF time per connection,
// completeness against the churn client's ground truth, and lost events.
//
// portlife also runs with one more output each: a file sink, a syslog and a
// TCP sink to receivers the runner runs on loopback, and the store. A
// second table says what reached each output, how fast, and what portlife
// counted sent and dropped.
//
// With --portlife-baseline, a second portlife binary (an older build, say)
// runs as the tracer "portlife-baseline", interleaved with the others, so
// before and after are compared within one run.
//
// It needs root: BPF tracers, kernel.bpf_stats_enabled and tracefs.
//
//	runner --runs 3 --duration 10s --tracers none,portlife,tcplife --json out.json
//	runner --portlife-baseline ./bin/portlife-baseline
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

type options struct {
	duration     time.Duration
	runs         int
	configs      string
	tracers      string
	tracersSet   bool // --tracers was given, rather than defaulted
	portlife     string
	portlifeArgs string
	baseline     string
	tcplife      string
	churn        string
	jsonOut      string
	keep         bool
	bpfStats     bool
	drain        time.Duration
	cooldown     time.Duration
	size         int
	sources      int
}

// Tracer names for --tracers. portlife-baseline is portlife run from the
// --portlife-baseline binary.
const (
	defaultTracers = "none,portlife," + summaryTracer + "," + metricsTracer + "," +
		fileSinkTracer + "," + syslogSinkTracer + "," + tcpSinkTracer + "," + storeTracer + ",tcplife"
	baselineTracer  = "portlife-baseline"
	knownTracerList = "none, portlife, " + noAccounting + ", " + baselineTracer + ", " + summaryTracer + ", " + metricsTracer + ", " +
		fileSinkTracer + ", " + syslogSinkTracer + ", " + tcpSinkTracer + ", " + storeTracer + ", tcplife"
	// noAccounting is portlife with --no-port-accounting: beside portlife
	// in one interleaved run, it shows what port accounting costs.
	noAccounting = "portlife-no-accounting"
	// portlife with --summary, and with --metrics-addr: what each costs
	// beside plain portlife, in the same interleaved run.
	summaryTracer = "portlife-summary"
	metricsTracer = "portlife-metrics"
)

// parseFlags parses args into options; fs decides what a bad flag does
// (flag.CommandLine exits).
func parseFlags(fs *flag.FlagSet, args []string) (*options, error) {
	o := &options{}
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "churn duration per run")
	fs.IntVar(&o.runs, "runs", 3, "runs per configuration and tracer")
	fs.StringVar(&o.configs, "configs", "", "comma-separated configurations, or \"all\" (default: "+configNames(defaultConfigs)+"; also: "+configNames(extraConfigs)+")")
	fs.StringVar(&o.tracers, "tracers", defaultTracers, "comma-separated tracers: "+knownTracerList+" (the default adds "+baselineTracer+" after portlife when --portlife-baseline is set)")
	fs.StringVar(&o.portlife, "portlife", "./bin/portlife", "portlife binary")
	fs.StringVar(&o.portlifeArgs, "portlife-args", "", "extra arguments for portlife, space-separated")
	fs.StringVar(&o.baseline, "portlife-baseline", "", "a second portlife binary to compare against, run as tracer "+baselineTracer+" with the same arguments (default: none)")
	fs.StringVar(&o.tcplife, "tcplife", "/usr/sbin/tcplife", "tcplife binary (Debian package libbpf-tools)")
	fs.StringVar(&o.churn, "churn", defaultChurn(), "churn generator binary")
	fs.StringVar(&o.jsonOut, "json", "", "also write raw per-run results to this file")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory with all outputs")
	fs.BoolVar(&o.bpfStats, "bpf-stats", true, "enable kernel.bpf_stats_enabled during the benchmark (needed for BPF time)")
	fs.DurationVar(&o.drain, "drain", time.Second, "wait after the client finishes before stopping the tracer")
	fs.DurationVar(&o.cooldown, "cooldown", 2*time.Second, "pause between runs")
	fs.IntVar(&o.size, "size", 100, "bytes echoed per connection")
	fs.IntVar(&o.sources, "sources", 4, "loopback source addresses for the client (see churn --sources)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "tracers" {
			o.tracersSet = true
		}
	})
	return o, nil
}

// defaultChurn prefers a churn binary next to the runner, as `make bench`
// builds both into bin/.
func defaultChurn() string {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "churn")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "./bin/churn"
}

func main() {
	o, err := parseFlags(flag.CommandLine, os.Args[1:])
	if err != nil {
		os.Exit(2) // flag.CommandLine has printed it
	}
	if err := run(o); err != nil {
		fmt.Fprintf(os.Stderr, "runner: %v\n", err)
		os.Exit(1)
	}
}

func run(o *options) error {
	cfgs, err := selectConfigs(o.configs)
	if err != nil {
		return err
	}
	names, tracers, err := selectTracers(o)
	if err != nil {
		return err
	}
	churn, err := findBinary(o.churn)
	if err != nil {
		return fmt.Errorf("churn generator: %w (build it with: go build -o bin/ ./bench/...)", err)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "runner: warning: not root; tracers and bpf stats will likely fail")
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	m := machineInfo()
	m.print(os.Stdout)
	if slices.ContainsFunc(tracers, func(t *tracer) bool { return t != nil }) {
		if note := ensureTracefs(); note != "" {
			fmt.Println("note:", note)
		}
	}
	env, cleanup, err := setup(o, churn)
	if err != nil {
		return err
	}
	defer cleanup()
	fmt.Printf("configs: %s; tracers: %s; %d runs × %s\n", configNames(cfgs), strings.Join(names, ","), o.runs, o.duration)
	if note := skippedNote(cfgs, names); note != "" {
		fmt.Println(note)
	}
	fmt.Println()

	results := runAll(ctx, env, o, cfgs, names, tracers)
	fillRatios(results)
	fmt.Println()
	printTable(os.Stdout, results)
	printNotes(results)
	if o.jsonOut != "" {
		if err := writeJSON(o.jsonOut, m, cfgs, results); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return errors.New("interrupted")
	}
	return nil
}

// setup creates the work directory, enables BPF stats and the probe
// listener; cleanup undoes all of it.
func setup(o *options, churn string) (*benchEnv, func(), error) {
	dir, err := os.MkdirTemp("", "portlife-bench-")
	if err != nil {
		return nil, nil, fmt.Errorf("create temp dir: %w", err)
	}
	var undo []func()
	cleanup := func() {
		for _, f := range slices.Backward(undo) {
			f()
		}
	}
	undo = append(undo, func() {
		if o.keep {
			fmt.Println("outputs kept in", dir)
			return
		}
		os.RemoveAll(dir)
	})
	p, err := newProber()
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	undo = append(undo, p.close)
	env := &benchEnv{dir: dir, churn: churn, duration: o.duration, drain: o.drain,
		size: o.size, sources: o.sources, keep: o.keep, probe: p.poke}
	if o.bpfStats {
		restore, err := enableBPFStats()
		if err != nil {
			fmt.Fprintf(os.Stderr, "runner: warning: %v; BPF time not measured\n", err)
		} else {
			env.bpfStats = true
			undo = append(undo, restore)
		}
	}
	return env, cleanup, nil
}

// runAll interleaves tracers within each run (none, portlife, tcplife,
// none, ...) so slow drifts of the machine affect all tracers alike.
func runAll(ctx context.Context, env *benchEnv, o *options, cfgs []config, names []string, tracers []*tracer) []*runResult {
	var results []*runResult
	first := true
	width := 9
	for _, n := range names {
		width = max(width, len(n))
	}
	for _, cfg := range cfgs {
		for run := 1; run <= o.runs; run++ {
			for i, tr := range tracers {
				if ctx.Err() != nil {
					return results
				}
				if !runsOn(cfg, names[i]) {
					continue
				}
				if !first {
					sleepCtx(ctx, o.cooldown)
				}
				first = false
				fmt.Printf("%-9s %-*s run %d/%d ... ", cfg.Name, width, names[i], run, o.runs)
				r := runOne(ctx, env, cfg, tr, run)
				fmt.Println(shortResult(r))
				results = append(results, r)
			}
		}
	}
	return results
}

// runsOn says whether a tracer runs on a configuration. On the data path,
// the tracers that are portlife plus a consumer of its events (a summary,
// metrics, a sink, the store) are left out: its few connections give them
// nothing to do, so they would measure portlife again, at the cost of a
// longer `make bench`.
func runsOn(cfg config, tracer string) bool {
	if !cfg.DataPath {
		return true
	}
	return tracer != summaryTracer && tracer != metricsTracer && outputs[tracer] == nil
}

// skippedNote names the tracers runsOn leaves out of the data-path
// configurations, if any.
func skippedNote(cfgs []config, names []string) string {
	var dp, skipped []string
	for _, c := range cfgs {
		if !c.DataPath {
			continue
		}
		dp = append(dp, c.Name)
		if skipped == nil {
			for _, n := range names {
				if !runsOn(c, n) {
					skipped = append(skipped, n)
				}
			}
		}
	}
	if len(skipped) == 0 {
		return ""
	}
	return fmt.Sprintf("note: %s run without %s (the data path gives their outputs nothing to do)", strings.Join(dp, ","), strings.Join(skipped, ","))
}

func shortResult(r *runResult) string {
	if r.Err != "" {
		return "error: " + r.Err
	}
	s := fmt.Sprintf("%d conns, %.0f/s", r.Conns, float64(r.ConnRate))
	if r.DataPath {
		s = fmt.Sprintf("%d round trips on %d conns, %.0f/s", r.RoundTrips, r.Conns, float64(r.RTRate))
	}
	if r.Tracer != "none" {
		s += fmt.Sprintf(", client %s%%, server %s%%, lost %s", fmtMetric(r.ClientPct, 2), fmtMetric(r.ServerPct, 2), fmtMetric(r.Lost, 0))
	}
	return s
}

func fmtMetric(m metric, prec int) string {
	if !m.valid() {
		return "?"
	}
	return fmt.Sprintf("%.*f", prec, float64(m))
}

func printNotes(results []*runResult) {
	seen := map[string]bool{}
	var lines []string
	for _, r := range results {
		msgs := r.Notes
		if r.Err != "" {
			msgs = append(msgs, "error: "+r.Err)
		}
		for _, n := range msgs {
			line := fmt.Sprintf("  %s/%s run %d: %s", r.Config, r.Tracer, r.Run, n)
			key := r.Config + r.Tracer + n
			if !seen[key] {
				seen[key] = true
				lines = append(lines, line)
			}
		}
	}
	if len(lines) > 0 {
		fmt.Println("\nnotes:")
		fmt.Println(strings.Join(lines, "\n"))
	}
	fmt.Println("\ncells are min/median/max over runs when they differ; '-' = not applicable or not measured, lost '-' = tracer did not report it")
	if slices.ContainsFunc(results, func(r *runResult) bool { return r.DataPath }) {
		fmt.Println("data path: rt = round trips; BPF ns/rt and runs/rt are all of the tracer's program time and runs over the run, host-wide, per round trip;\n" +
			"  client % and server % need the connection's close, and for portlife its open too, with the right ports and pid")
	}
	if slices.ContainsFunc(results, func(r *runResult) bool { return outputs[r.Tracer] != nil }) {
		fmt.Println("outputs: records and MB are what reached the output (the runner's receiver, the file, the store's lifetimes and its size on disk);\n" +
			"  rec/s and MB/s over a receiver's first to last byte, else over the churn (the store: rows written); sent, dropped from portlife's tracing stopped")
	}
}

func selectConfigs(list string) ([]config, error) {
	if list == "" {
		return defaultConfigs, nil
	}
	all := slices.Concat(defaultConfigs, extraConfigs)
	if list == "all" {
		return all, nil
	}
	var out []config
	for _, name := range strings.Split(list, ",") {
		i := slices.IndexFunc(all, func(c config) bool { return c.Name == strings.TrimSpace(name) })
		if i < 0 {
			return nil, fmt.Errorf("unknown config %q (have %s)", name, configNames(all))
		}
		out = append(out, all[i])
	}
	return out, nil
}

func configNames(cfgs []config) string {
	var n []string
	for _, c := range cfgs {
		n = append(n, c.Name)
	}
	return strings.Join(n, ",")
}

// tracerNames is the --tracers list in the order the tracers interleave.
// When --tracers is left at its default and --portlife-baseline is set, the
// baseline follows portlife, so the two run next to each other in every
// round; an explicit list is taken as given.
func tracerNames(o *options) ([]string, error) {
	var names []string
	for _, name := range strings.Split(o.tracers, ",") {
		name = strings.TrimSpace(name)
		switch name {
		case "none", "portlife", noAccounting, baselineTracer, summaryTracer, metricsTracer,
			fileSinkTracer, syslogSinkTracer, tcpSinkTracer, storeTracer, "tcplife":
		default:
			return nil, fmt.Errorf("unknown tracer %q (have %s)", name, knownTracerList)
		}
		names = append(names, name)
		if name == "portlife" && o.baseline != "" && !o.tracersSet {
			names = append(names, baselineTracer)
		}
	}
	if slices.Contains(names, baselineTracer) && o.baseline == "" {
		return nil, fmt.Errorf("tracer %s needs --portlife-baseline", baselineTracer)
	}
	return names, nil
}

// selectTracers resolves tracer names; a tracer whose binary is missing is
// skipped with a note rather than failing the whole benchmark, except the
// baseline: it is only there to be compared with, so a run without it would
// be wasted.
func selectTracers(o *options) ([]string, []*tracer, error) {
	list, err := tracerNames(o)
	if err != nil {
		return nil, nil, err
	}
	if o.baseline != "" && !slices.Contains(list, baselineTracer) {
		fmt.Fprintf(os.Stderr, "runner: warning: --tracers does not list %s; --portlife-baseline is not run\n", baselineTracer)
	}
	var names []string
	var out []*tracer
	for _, name := range list {
		var tr *tracer
		switch name {
		case "none":
		case "portlife":
			bin, err := findBinary(o.portlife)
			if err != nil {
				fmt.Fprintf(os.Stderr, "runner: skipping portlife: %v (build it with: make)\n", err)
				continue
			}
			tr = newPortlife(name, bin, strings.Fields(o.portlifeArgs))
		case noAccounting, summaryTracer, metricsTracer:
			bin, err := findBinary(o.portlife)
			if err != nil {
				fmt.Fprintf(os.Stderr, "runner: skipping %s: %v (build it with: make)\n", name, err)
				continue
			}
			extra := []string{"--no-port-accounting"}
			switch name {
			case summaryTracer:
				extra = []string{"--summary", "10s"}
			case metricsTracer:
				extra = []string{"--metrics-addr", "127.0.0.1:0"}
			}
			tr = newPortlife(name, bin, append(extra, strings.Fields(o.portlifeArgs)...))
		case fileSinkTracer, syslogSinkTracer, tcpSinkTracer, storeTracer:
			bin, err := findBinary(o.portlife)
			if err != nil {
				fmt.Fprintf(os.Stderr, "runner: skipping %s: %v (build it with: make)\n", name, err)
				continue
			}
			tr = newPortlife(name, bin, strings.Fields(o.portlifeArgs))
			tr.output = outputs[name]
		case baselineTracer:
			bin, err := findBinary(o.baseline)
			if err != nil {
				return nil, nil, fmt.Errorf("portlife baseline: %w (build one with: make bench BASELINE=<git rev>)", err)
			}
			tr = newPortlife(name, bin, strings.Fields(o.portlifeArgs))
		case "tcplife":
			bin, err := findBinary(o.tcplife)
			if err != nil {
				fmt.Fprintf(os.Stderr, "runner: skipping tcplife: %v (install it with: apt-get install -y libbpf-tools)\n", err)
				continue
			}
			tr = newTcplife(bin)
		}
		names = append(names, name)
		out = append(out, tr)
	}
	if len(out) == 0 {
		return nil, nil, errors.New("no tracer left to run")
	}
	return names, out, nil
}

func lookPath(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not in PATH: %w", name, err)
	}
	return p, nil
}

const bpfStatsSysctl = "/proc/sys/kernel/bpf_stats_enabled"

// enableBPFStats turns on per-program run time accounting and returns a
// function that restores the previous setting.
func enableBPFStats() (func(), error) {
	old, err := os.ReadFile(bpfStatsSysctl)
	if err != nil {
		return nil, fmt.Errorf("read kernel.bpf_stats_enabled: %w", err)
	}
	if err := os.WriteFile(bpfStatsSysctl, []byte("1\n"), 0o644); err != nil {
		return nil, fmt.Errorf("enable kernel.bpf_stats_enabled: %w", err)
	}
	return func() {
		if err := os.WriteFile(bpfStatsSysctl, old, 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "runner: restore kernel.bpf_stats_enabled: %v\n", err)
		}
	}, nil
}

// ensureTracefs mounts tracefs when it is missing, as on minimal VMs:
// tracepoint attachment (tcplife's sock:inet_sock_set_state) needs it to
// look up event ids. It stays mounted afterwards, as on a standard system.
func ensureTracefs() string {
	for _, d := range []string{"/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"} {
		if _, err := os.Stat(d); err == nil {
			return ""
		}
	}
	if err := unix.Mount("tracefs", "/sys/kernel/tracing", "tracefs", 0, ""); err != nil {
		return fmt.Sprintf("tracefs is not mounted and mounting it failed: %v; tracepoint-based tracers may fail", err)
	}
	return "mounted tracefs on /sys/kernel/tracing (tracepoints need it)"
}

type machine struct {
	NProc     int    `json:"nproc"`
	Kernel    string `json:"kernel"`
	CPU       string `json:"cpu"`
	TwReuse   string `json:"tcp_tw_reuse"`
	PortRange string `json:"ip_local_port_range"`
	GoVersion string `json:"go_version"`
}

func machineInfo() machine {
	m := machine{NProc: runtime.NumCPU(), CPU: cpuModel(), GoVersion: runtime.Version()}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	m.TwReuse = readTrim("/proc/sys/net/ipv4/tcp_tw_reuse")
	m.PortRange = strings.Join(strings.Fields(readTrim("/proc/sys/net/ipv4/ip_local_port_range")), "-")
	return m
}

func (m machine) print(w *os.File) {
	fmt.Fprintf(w, "machine: %d CPUs, %s, kernel %s, tcp_tw_reuse=%s, ports %s, %s\n",
		m.NProc, m.CPU, m.Kernel, m.TwReuse, m.PortRange, m.GoVersion)
}

func cpuModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for line := range strings.Lines(string(data)) {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

func readTrim(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(data))
}

func writeJSON(path string, m machine, cfgs []config, results []*runResult) error {
	out := struct {
		Machine machine      `json:"machine"`
		Configs []config     `json:"configs"`
		Results []*runResult `json:"results"`
	}{m, cfgs, results}
	data, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	return nil
}
