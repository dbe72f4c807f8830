package main

import (
	"encoding/json"
	"flag"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/portlife/portlife/bench/internal/truth"
)

func TestMatchMultiset(t *testing.T) {
	tests := []struct {
		name          string
		truth, events []uint16
		want          int
	}{
		{"empty", nil, nil, 0},
		{"all found", []uint16{1, 2, 3}, []uint16{3, 2, 1}, 3},
		{"reused port seen fewer times", []uint16{7, 7, 7}, []uint16{7}, 1},
		{"duplicate events do not inflate", []uint16{7}, []uint16{7, 7, 7}, 1},
		{"other ports ignored", []uint16{1, 2}, []uint16{3, 4, 2}, 1},
		{"extreme ports", []uint16{0, 65535, 65535}, []uint16{65535, 65535, 0}, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := matchMultiset(countPorts(tt.truth), countPorts(tt.events)); got != tt.want {
				t.Errorf("matchMultiset = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestSummarize(t *testing.T) {
	tests := []struct {
		name          string
		vals          []metric
		min, med, max float64
		n             int
	}{
		{"none", nil, 0, 0, 0, 0},
		{"only missing", []metric{na, na}, 0, 0, 0, 0},
		{"one", []metric{5}, 5, 5, 5, 1},
		{"odd", []metric{3, 1, 2}, 1, 2, 3, 3},
		{"even takes mean of middle", []metric{4, 1, 3, 2}, 1, 2.5, 4, 4},
		{"missing skipped", []metric{na, 10, 30, na, 20}, 10, 20, 30, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := summarize(tt.vals)
			if s.n != tt.n || (s.n > 0 && (s.min != tt.min || s.med != tt.med || s.max != tt.max)) {
				t.Errorf("summarize = %+v, want min %v med %v max %v n %d", s, tt.min, tt.med, tt.max, tt.n)
			}
		})
	}
}

func TestSummaryFormat(t *testing.T) {
	tests := []struct {
		s    summary
		prec int
		want string
	}{
		{summary{}, 1, "-"},
		{summary{min: 2, med: 2, max: 2, n: 3}, 1, "2.0"},
		{summary{min: 1.04, med: 1.01, max: 1.01, n: 1}, 0, "1"},
		{summary{min: 1, med: 2, max: 3, n: 3}, 0, "1/2/3"},
		{summary{min: 99.991, med: 99.994, max: 99.996, n: 3}, 1, "100.0"}, // equal once rounded
	}
	for _, tt := range tests {
		if got := tt.s.format(tt.prec); got != tt.want {
			t.Errorf("%+v.format(%d) = %q, want %q", tt.s, tt.prec, got, tt.want)
		}
	}
}

func TestMetricJSON(t *testing.T) {
	b, err := json.Marshal(struct{ A, B metric }{1.5, na})
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"A":1.5,"B":null}` {
		t.Errorf("got %s", b)
	}
	var back struct{ A, B metric }
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.A != 1.5 || !math.IsNaN(float64(back.B)) {
		t.Errorf("round trip = %+v", back)
	}
}

func TestParseTcplifeLine(t *testing.T) {
	tests := []struct {
		name string
		line string
		want tcplifeLine
		ok   bool
	}{
		{"header", "PID     COMM             LADDR           LPORT RADDR           RPORT TX_KB  RX_KB  MS", tcplifeLine{}, false},
		{"client side", "2522    churn            127.0.0.2       35600 127.0.0.1       60303 0.10   0.00   0.08", tcplifeLine{2522, 35600, 60303}, true},
		{"comm with spaces", "77      tmux: server     ::1             22    ::1             41000 1.00   2.00   3.00", tcplifeLine{77, 22, 41000}, true},
		{"lost message", "lost 12 events on CPU #1", tcplifeLine{}, false},
		{"too short", "1 a b", tcplifeLine{}, false},
		{"port out of range", "1 c 127.0.0.1 70000 127.0.0.1 80 0 0 0", tcplifeLine{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := parseTcplifeLine([]byte(tt.line))
			if ok != tt.ok || got != tt.want {
				t.Errorf("parseTcplifeLine = %+v, %v; want %+v, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestParseTcplife(t *testing.T) {
	out := `PID     COMM             LADDR           LPORT RADDR           RPORT TX_KB  RX_KB  MS
100     churn            127.0.0.2       40000 127.0.0.1       5000  0.10   0.10   0.08
200     churn            127.0.0.1       5000  127.0.0.2       40000 0.10   0.10   0.08
0       swapper/1        127.0.0.1       5000  127.0.0.2       40002 0.10   0.10   0.08
100     churn            127.0.0.2       40001 127.0.0.1       6000  0.10   0.10   0.08
`
	spec := matchSpec{proto: "tcp", clientPID: 100, serverPID: 200, serverPort: 5000}
	ec, err := parseTcplife(strings.NewReader(out), spec)
	if err != nil {
		t.Fatal(err)
	}
	if ec.client[40000] != 1 || ec.client[40001] != 0 {
		t.Errorf("client counts wrong: 40000=%d 40001=%d (other server port must not count)", ec.client[40000], ec.client[40001])
	}
	if ec.server[40000] != 1 || ec.server[40002] != 0 || ec.serverAnyPID[40002] != 1 {
		t.Errorf("server counts wrong: 40000=%d 40002=%d any=%d", ec.server[40000], ec.server[40002], ec.serverAnyPID[40002])
	}
}

func TestParseTcplifeLost(t *testing.T) {
	stderr := "libbpf: something\nlost 12 events on CPU #0\nlost 3 events on CPU #1\n"
	if got := parseTcplifeLost(strings.NewReader(stderr)); got != 15 {
		t.Errorf("lost = %d, want 15", got)
	}
}

func TestParsePortlife(t *testing.T) {
	out := `{"event":"open","proto":"tcp","pid":100,"lport":40000,"rport":5000,"direction":"outbound"}
{"event":"close","proto":"tcp","pid":100,"lport":40000,"rport":5000,"direction":"outbound"}
{"event":"close","proto":"tcp","pid":100,"lport":40000,"rport":5000,"direction":"outbound"}
{"event":"close","proto":"udp","pid":100,"lport":40001,"rport":5000,"direction":"outbound"}
{"event":"close","proto":"tcp","pid":999,"lport":40002,"rport":5000,"direction":"outbound"}
{"event":"close","proto":"tcp","pid":200,"lport":5000,"rport":40000,"direction":"inbound"}
{"event":"close","proto":"tcp","pid":0,"lport":5000,"rport":40003,"direction":"inbound"}
{"event":"close", broken
`
	spec := matchSpec{proto: "tcp", clientPID: 100, serverPID: 200, serverPort: 5000}
	ec, err := parsePortlife(strings.NewReader(out), spec)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want int32
	}{
		{"client 40000 (open ignored, duplicate close counted)", ec.client[40000], 2},
		{"client udp ignored", ec.client[40001], 0},
		{"client wrong pid", ec.client[40002], 0},
		{"client wrong pid, any pid", ec.clientAnyPID[40002], 1},
		{"server 40000", ec.server[40000], 1},
		{"server pid 0", ec.server[40003], 0},
		{"server pid 0, any pid", ec.serverAnyPID[40003], 1},
		{"bad lines", int32(ec.badLines), 1},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
}

func TestParsePortlifeLost(t *testing.T) {
	tests := []struct {
		name   string
		stderr string
		want   int
		ok     bool
	}{
		{"missing", `{"level":"info","msg":"tracing started"}`, 0, false},
		{"stopped without lost", `{"level":"info","msg":"tracing stopped"}`, 0, false},
		{"last wins", `{"msg":"tracing stopped","lost":3}
{"msg":"warn","text":"tracing stopped soon"}
{"level":"info","msg":"tracing stopped","events":406320,"lost":17}`, 17, true},
		{"not json", "tracing stopped lost=4", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := parsePortlifeLost(strings.NewReader(tt.stderr))
			if got != tt.want || ok != tt.ok {
				t.Errorf("parsePortlifeLost = %d, %v; want %d, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestParseFdinfo(t *testing.T) {
	tests := []struct {
		name     string
		fdinfo   string
		prog     progStat
		isProg   bool
		linkProg uint32
		isLink   bool
	}{
		{
			name: "program",
			fdinfo: "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\nprog_type:\t5\nprog_jited:\t1\n" +
				"prog_tag:\t5de3a21955b57082\nmemlock:\t4096\nprog_id:\t125\nrun_time_ns:\t123456\nrun_cnt:\t789\n" +
				"recursion_misses:\t0\nverified_insns:\t374\n",
			prog:   progStat{ID: 125, Type: 5, RunTimeNs: 123456, RunCnt: 789},
			isProg: true,
		},
		{
			name:     "link",
			fdinfo:   "pos:\t0\nlink_type:\tperf\nlink_id:\t90\nprog_tag:\t5de3a21955b57082\nprog_id:\t117\ntp_name:\tinet_sock_set_state\n",
			linkProg: 117,
			isLink:   true,
		},
		{
			name:   "map",
			fdinfo: "pos:\t0\nmap_type:\t1\nkey_size:\t8\nmap_id:\t41\n",
		},
		{
			name:   "epoll",
			fdinfo: "pos:\t0\ntfd:       14 events:       19 data:     5628cde6dea0  pos:0 ino:40e sdev:10\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kv := parseFdinfo(strings.NewReader(tt.fdinfo))
			p, ok := progFromFdinfo(kv)
			if ok != tt.isProg || p != tt.prog {
				t.Errorf("progFromFdinfo = %+v, %v; want %+v, %v", p, ok, tt.prog, tt.isProg)
			}
			id, ok := linkProgID(kv)
			if ok != tt.isLink || id != tt.linkProg {
				t.Errorf("linkProgID = %d, %v; want %d, %v", id, ok, tt.linkProg, tt.isLink)
			}
		})
	}
}

func TestProgDelta(t *testing.T) {
	before := map[uint32]progStat{1: {ID: 1, RunTimeNs: 100, RunCnt: 10}, 2: {ID: 2, RunTimeNs: 50, RunCnt: 5}}
	after := map[uint32]progStat{
		1: {ID: 1, RunTimeNs: 1100, RunCnt: 20},
		2: {ID: 2, RunTimeNs: 50, RunCnt: 5},
		3: {ID: 3, RunTimeNs: 7, RunCnt: 1}, // loaded after the first sample
	}
	rt, rc := progDelta(before, after)
	if rt != 1007 || rc != 11 {
		t.Errorf("progDelta = %d, %d; want 1007, 11", rt, rc)
	}
}

func TestParseStatCPU(t *testing.T) {
	tests := []struct {
		name string
		stat string
		want float64
		ok   bool
	}{
		{"plain", "1234 (tcplife) S 1 1234 1234 0 -1 4194560 1 0 0 0 250 50 0 0 20 0 1 0 100 1000 100", 3.0, true},
		{"comm with spaces and parens", "9 (a) b (c)) R 1 9 9 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0", 0.1, true},
		{"truncated", "9 (x) R 1 2", 0, false},
		{"no comm", "garbage", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatCPU([]byte(tt.stat))
			if (err == nil) != tt.ok || math.Abs(got-tt.want) > 1e-9 {
				t.Errorf("parseStatCPU = %v, %v; want %v, ok=%v", got, err, tt.want, tt.ok)
			}
		})
	}
}

func TestParseStatusKiB(t *testing.T) {
	status := "Name:\ttcplife\nVmPeak:\t   20000 kB\nVmHWM:\t   13628 kB\nVmRSS:\t    2424 kB\n"
	if got, ok := parseStatusKiB([]byte(status), "VmHWM"); !ok || got != 13628 {
		t.Errorf("VmHWM = %d, %v", got, ok)
	}
	if _, ok := parseStatusKiB([]byte(status), "VmSwap"); ok {
		t.Error("VmSwap found in status without it")
	}
}

func TestFillRatios(t *testing.T) {
	rs := []*runResult{
		{Config: "a", Tracer: "none", ConnRate: 100},
		{Config: "a", Tracer: "none", ConnRate: 300},
		{Config: "a", Tracer: "none", ConnRate: 200},
		{Config: "a", Tracer: "x", ConnRate: 100},
		{Config: "b", Tracer: "x", ConnRate: 100},
	}
	fillRatios(rs)
	if rs[1].RatioVsNone != 1.5 || rs[3].RatioVsNone != 0.5 {
		t.Errorf("ratios = %v, %v; want 1.5, 0.5", rs[1].RatioVsNone, rs[3].RatioVsNone)
	}
	if rs[4].RatioVsNone.valid() {
		t.Errorf("config without a none run has ratio %v", rs[4].RatioVsNone)
	}
}

func TestTracerNames(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string // comma-joined names, or the error
	}{
		{"default", nil, "none,portlife,portlife-summary,portlife-metrics,portlife-file-sink,portlife-syslog-sink,portlife-tcp-sink,portlife-store,tcplife"},
		{"baseline after portlife by default", []string{"--portlife-baseline", "old"}, "none,portlife,portlife-baseline,portlife-summary,portlife-metrics,portlife-file-sink,portlife-syslog-sink,portlife-tcp-sink,portlife-store,tcplife"},
		{"explicit list without baseline", []string{"--portlife-baseline", "old", "--tracers", "none,portlife"}, "none,portlife"},
		{"explicit default list is explicit", []string{"--portlife-baseline", "old", "--tracers", "none,portlife,tcplife"}, "none,portlife,tcplife"},
		{"explicit order kept", []string{"--portlife-baseline", "old", "--tracers", "portlife-baseline, none,portlife"}, "portlife-baseline,none,portlife"},
		{"baseline alone", []string{"--portlife-baseline", "old", "--tracers", "portlife-baseline"}, "portlife-baseline"},
		{"without accounting", []string{"--tracers", "none,portlife,portlife-no-accounting"}, "none,portlife,portlife-no-accounting"},
		{"outputs", []string{"--tracers", "none,portlife,portlife-store,portlife-tcp-sink,portlife-syslog-sink,portlife-file-sink"}, "none,portlife,portlife-store,portlife-tcp-sink,portlife-syslog-sink,portlife-file-sink"},
		{"unknown output", []string{"--tracers", "none,portlife-udp-sink"}, `error: unknown tracer "portlife-udp-sink" (have none, portlife, portlife-no-accounting, portlife-baseline, portlife-summary, portlife-metrics, portlife-file-sink, portlife-syslog-sink, portlife-tcp-sink, portlife-store, tcplife)`},
		{"baseline without binary", []string{"--tracers", "none,portlife,portlife-baseline"}, "error: tracer portlife-baseline needs --portlife-baseline"},
		{"empty baseline path", []string{"--portlife-baseline=", "--tracers", "portlife-baseline"}, "error: tracer portlife-baseline needs --portlife-baseline"},
		{"unknown", []string{"--tracers", "none,bcc"}, `error: unknown tracer "bcc" (have none, portlife, portlife-no-accounting, portlife-baseline, portlife-summary, portlife-metrics, portlife-file-sink, portlife-syslog-sink, portlife-tcp-sink, portlife-store, tcplife)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("runner", flag.ContinueOnError)
			o, err := parseFlags(fs, tt.args)
			if err != nil {
				t.Fatal(err)
			}
			names, err := tracerNames(o)
			got := strings.Join(names, ",")
			if err != nil {
				got = "error: " + err.Error()
			}
			if got != tt.want {
				t.Errorf("tracerNames = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestSelectTracersBaseline(t *testing.T) {
	dir := t.TempDir()
	exe := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	o := &options{tracers: defaultTracers, portlife: exe("portlife"), portlifeArgs: "--proto tcp",
		baseline: exe("portlife-old"), tcplife: exe("tcplife")}
	names, trs, err := selectTracers(o)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(names, ","); got != "none,portlife,portlife-baseline,portlife-summary,portlife-metrics,portlife-file-sink,portlife-syslog-sink,portlife-tcp-sink,portlife-store,tcplife" {
		t.Fatalf("names = %s", got)
	}
	for i, tr := range trs[1:] {
		if tr.name != names[i+1] {
			t.Errorf("tracer %d is named %q, listed as %q", i+1, tr.name, names[i+1])
		}
	}
	cur, base := trs[1], trs[2]
	for _, tr := range trs[3:5] {
		want := map[string]string{"portlife-summary": "--summary", "portlife-metrics": "--metrics-addr"}[tr.name]
		if tr.bin != o.portlife || !slices.Contains(tr.args, want) || !slices.Contains(tr.args, "--proto") {
			t.Errorf("%s runs %s %v; want portlife with %s and the portlife args", tr.name, tr.bin, tr.args, want)
		}
	}
	for _, tr := range trs[5:9] {
		if tr.bin != o.portlife || tr.output == nil || outputs[tr.name] == nil || !slices.Contains(tr.args, "--proto") {
			t.Errorf("%s runs %s %v with output %v; want portlife with its output and the portlife args", tr.name, tr.bin, tr.args, tr.output != nil)
		}
	}
	for _, tr := range trs[:5] {
		if tr != nil && tr.output != nil {
			t.Errorf("%s has an extra output", tr.name)
		}
	}
	if cur.bin != o.portlife || base.bin != o.baseline {
		t.Errorf("binaries = %s, %s; want %s, %s", cur.bin, base.bin, o.portlife, o.baseline)
	}
	if !slices.Equal(cur.args, base.args) || !slices.Equal(cur.protos, base.protos) || !slices.Contains(base.args, "--proto") {
		t.Errorf("baseline runs as %v %v, portlife as %v %v", base.args, base.protos, cur.args, cur.protos)
	}

	o.baseline = filepath.Join(dir, "missing")
	if _, _, err := selectTracers(o); err == nil {
		t.Error("a missing baseline binary is skipped; want an error")
	}
}

func TestSelectConfigs(t *testing.T) {
	tests := []struct {
		name, list string
		want       string // comma-joined names, or the error
	}{
		{"default has churn and the data path", "", "tcp-w4,tcp-w32,tcp-r5k,tcp-r20k,udp-w4,tcp-rr4,udp-rr4"},
		{"all adds the extra ones", "all", "tcp-w4,tcp-w32,tcp-r5k,tcp-r20k,udp-w4,tcp-rr4,udp-rr4,tcp-srvclose"},
		{"data path alone, in the order given", "udp-rr4, tcp-rr4", "udp-rr4,tcp-rr4"},
		{"unknown", "tcp-rr5", `error: unknown config "tcp-rr5" (have tcp-w4,tcp-w32,tcp-r5k,tcp-r20k,udp-w4,tcp-rr4,udp-rr4,tcp-srvclose)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfgs, err := selectConfigs(tt.list)
			got := configNames(cfgs)
			if err != nil {
				got = "error: " + err.Error()
			}
			if got != tt.want {
				t.Errorf("selectConfigs(%q) = %q, want %q", tt.list, got, tt.want)
			}
		})
	}
}

func TestDataPathConfigs(t *testing.T) {
	for _, name := range []string{"tcp-rr4", "udp-rr4"} {
		cfgs, err := selectConfigs(name)
		if err != nil {
			t.Fatal(err)
		}
		c := cfgs[0]
		if !c.DataPath || c.Workers != 4 || c.Size != 64 || c.Rate != 0 || c.Proto != name[:3] {
			t.Errorf("%s = %+v; want 4 workers of %s, 64-byte round trips, full speed", name, c, name[:3])
		}
	}
}

func TestRunsOn(t *testing.T) {
	churn, dataPath := config{Name: "tcp-w4"}, config{Name: "tcp-rr4", DataPath: true}
	tests := []struct {
		tracer              string
		onChurn, onDataPath bool
	}{
		{"none", true, true},
		{"portlife", true, true},
		{baselineTracer, true, true},
		{noAccounting, true, true},
		{"tcplife", true, true},
		{summaryTracer, true, false},
		{metricsTracer, true, false},
		{fileSinkTracer, true, false},
		{syslogSinkTracer, true, false},
		{tcpSinkTracer, true, false},
		{storeTracer, true, false},
	}
	for _, tt := range tests {
		if got := runsOn(churn, tt.tracer); got != tt.onChurn {
			t.Errorf("runsOn(churn, %s) = %v, want %v", tt.tracer, got, tt.onChurn)
		}
		if got := runsOn(dataPath, tt.tracer); got != tt.onDataPath {
			t.Errorf("runsOn(data path, %s) = %v, want %v", tt.tracer, got, tt.onDataPath)
		}
	}
	cfgs, _ := selectConfigs("")
	names := strings.Split(defaultTracers, ",")
	want := "note: tcp-rr4,udp-rr4 run without portlife-summary,portlife-metrics,portlife-file-sink,portlife-syslog-sink,portlife-tcp-sink,portlife-store (the data path gives their outputs nothing to do)"
	if got := skippedNote(cfgs, names); got != want {
		t.Errorf("skippedNote = %q, want %q", got, want)
	}
	if got := skippedNote(cfgs, []string{"none", "portlife", "tcplife"}); got != "" {
		t.Errorf("skippedNote with nothing skipped = %q", got)
	}
}

// TestChurnArgv checks what the runner asks of the churn server and client
// for each kind of configuration.
func TestChurnArgv(t *testing.T) {
	env := &benchEnv{churn: "churn", duration: 3 * time.Second, size: 100, sources: 4}
	addr := netip.MustParseAddrPort("127.0.0.1:5000")
	tests := []struct {
		cfg          string
		server       string
		client       string
		clientAbsent []string
	}{
		{"tcp-w4",
			"churn server --proto tcp --addr 127.0.0.1:0 --ready-file R --bufsize 4096 --handlers 64",
			"churn client --proto tcp --target 127.0.0.1:5000 --workers 4 --duration 3s --size 100 --sources 4 --truth D/truth.bin --rate 0",
			[]string{"--persistent"}},
		{"tcp-r5k",
			"churn server --proto tcp --addr 127.0.0.1:0 --ready-file R --bufsize 4096 --handlers 64",
			"churn client --proto tcp --target 127.0.0.1:5000 --workers 16 --duration 3s --size 100 --sources 4 --truth D/truth.bin --rate 5000",
			[]string{"--persistent"}},
		{"tcp-srvclose",
			"churn server --proto tcp --addr 127.0.0.1:0 --ready-file R --bufsize 4096 --handlers 64 --active-close 100",
			"churn client --proto tcp --target 127.0.0.1:5000 --workers 4 --duration 3s --size 100 --sources 4 --truth D/truth.bin --rate 0 --wait-eof",
			nil},
		{"tcp-rr4",
			"churn server --proto tcp --addr 127.0.0.1:0 --ready-file R --bufsize 4096 --handlers 64 --nodelay",
			"churn client --proto tcp --target 127.0.0.1:5000 --workers 4 --duration 3s --size 64 --sources 4 --truth D/truth.bin --persistent",
			[]string{"--rate"}},
		{"udp-rr4",
			"churn server --proto udp --addr 127.0.0.1:0 --ready-file R --bufsize 4096 --handlers 64",
			"churn client --proto udp --target 127.0.0.1:5000 --workers 4 --duration 3s --size 64 --sources 4 --truth D/truth.bin --persistent",
			[]string{"--rate"}},
	}
	for _, tt := range tests {
		t.Run(tt.cfg, func(t *testing.T) {
			cfgs, err := selectConfigs(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(serverArgv(env, cfgs[0], "R"), " "); got != tt.server {
				t.Errorf("server argv\n got %s\nwant %s", got, tt.server)
			}
			client := clientArgv(env, cfgs[0], addr, "D")
			if got := strings.Join(client, " "); got != tt.client {
				t.Errorf("client argv\n got %s\nwant %s", got, tt.client)
			}
			for _, f := range tt.clientAbsent {
				if slices.Contains(client, f) {
					t.Errorf("client argv has %s", f)
				}
			}
		})
	}
}

func TestFillRates(t *testing.T) {
	churnH := truth.Header{Conns: 200_000, Seconds: 10, Errors: 1}
	dpH := truth.Header{Conns: 4, Seconds: 10, RoundTrips: 400_000}
	tests := []struct {
		name     string
		cfg      config
		h        truth.Header
		traced   bool
		bpfStats bool
		want     map[string]float64 // NaN: not applicable
	}{
		{"churn, no tracer", config{}, churnH, false, true, map[string]float64{
			"conn/s": 20_000, "rt/s": math.NaN(), "CPU s/100k": math.NaN(), "BPF µs/conn": math.NaN()}},
		{"churn, traced", config{}, churnH, true, true, map[string]float64{
			"conn/s": 20_000, "rt/s": math.NaN(), "CPU s/100k": 1, "BPF µs/conn": 5, "ns/run": 250,
			"CPU s/1M rt": math.NaN(), "BPF ns/rt": math.NaN(), "runs/rt": math.NaN()}},
		{"churn, bpf_stats off", config{}, churnH, true, false, map[string]float64{
			"CPU s/100k": 1, "BPF µs/conn": math.NaN(), "ns/run": math.NaN()}},
		{"data path, no tracer", config{DataPath: true}, dpH, false, true, map[string]float64{
			"conn/s": math.NaN(), "rt/s": 40_000, "CPU s/1M rt": math.NaN()}},
		{"data path, traced", config{DataPath: true}, dpH, true, true, map[string]float64{
			"conn/s": math.NaN(), "rt/s": 40_000, "CPU s/1M rt": 5, "BPF ns/rt": 2500, "runs/rt": 10, "ns/run": 250,
			"CPU s/100k": math.NaN(), "BPF µs/conn": math.NaN()}},
		{"data path, bpf_stats off", config{DataPath: true}, dpH, true, false, map[string]float64{
			"rt/s": 40_000, "CPU s/1M rt": 5, "BPF ns/rt": math.NaN(), "runs/rt": math.NaN(), "ns/run": math.NaN()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newResult(tt.cfg, "portlife", 1)
			if tt.traced {
				r.TracerCPUSec, r.BPFRunTimeNs, r.BPFRunCnt = 2, 1e9, 4e6
			}
			fillRates(r, tt.h, tt.traced, tt.bpfStats)
			if r.Conns != tt.h.Conns || r.RoundTrips != tt.h.RoundTrips || r.ClientErrors != tt.h.Errors {
				t.Errorf("conns %d, round trips %d, errors %d; want the truth's", r.Conns, r.RoundTrips, r.ClientErrors)
			}
			for _, c := range slices.Concat(columns, dataPathColumns) {
				want, ok := tt.want[c.head]
				if !ok {
					continue
				}
				got := float64(c.get(r))
				if math.IsNaN(want) != math.IsNaN(got) || (!math.IsNaN(want) && math.Abs(got-want) > 1e-9*want) {
					t.Errorf("%s = %v, want %v", c.head, got, want)
				}
			}
		})
	}
}

func TestFillRatiosDataPath(t *testing.T) {
	dp := config{Name: "tcp-rr4", DataPath: true}
	rs := []*runResult{newResult(dp, "none", 1), newResult(dp, "none", 2), newResult(dp, "portlife", 1)}
	rs[0].RTRate, rs[1].RTRate, rs[2].RTRate = 30_000, 50_000, 36_000
	// A data-path run's connection rate (4 over the run) must not be
	// taken for its rate.
	for _, r := range rs {
		r.ConnRate = 0.4
	}
	fillRatios(rs)
	if rs[2].RatioVsNone != 0.9 {
		t.Errorf("ratio = %v, want 36000 over the median 40000 = 0.9", rs[2].RatioVsNone)
	}
}

func TestParsePortlifeOpens(t *testing.T) {
	out := `{"event":"open","proto":"tcp","pid":100,"lport":40000,"rport":5000,"direction":"outbound"}
{"event":"close","proto":"tcp","pid":100,"lport":40000,"rport":5000,"direction":"outbound"}
{"event":"open","proto":"tcp","pid":999,"lport":40001,"rport":5000,"direction":"outbound"}
{"event":"close","proto":"tcp","pid":100,"lport":40001,"rport":5000,"direction":"outbound"}
{"event":"close","proto":"tcp","pid":100,"lport":40002,"rport":5000,"direction":"outbound"}
{"event":"open","proto":"udp","pid":100,"lport":40003,"rport":5000,"direction":"outbound"}
{"event":"open","proto":"tcp","pid":200,"lport":5000,"rport":40000,"direction":"inbound"}
{"event":"close","proto":"tcp","pid":200,"lport":5000,"rport":40000,"direction":"inbound"}
{"event":"close","proto":"tcp","pid":200,"lport":5000,"rport":40001,"direction":"inbound"}
{"event":"open","proto":"tcp","pid":100,"lport":40004,"rport":6000,"direction":"outbound"}
`
	truthPorts := countPorts([]uint16{40000, 40001, 40002})
	tests := []struct {
		name                   string
		opens                  bool
		clientFound, serverFnd int
		clientOpens, srvOpens  int
	}{
		// Churn: closes alone count; opens are not even decoded.
		{"closes only", false, 3, 2, 0, 0},
		// The data path: 40000 has both on both sides; 40001's client
		// open has another pid, its server open is missing; 40002 has
		// no open at all.
		{"opens and closes", true, 1, 1, 1, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := matchSpec{proto: "tcp", clientPID: 100, serverPID: 200, serverPort: 5000, opens: tt.opens}
			ec, err := parsePortlife(strings.NewReader(out), spec)
			if err != nil {
				t.Fatal(err)
			}
			r := newResult(config{Name: "tcp-rr4", DataPath: tt.opens}, "portlife", 1)
			r.Conns = 3
			fillCompleteness(r, truthPorts, ec, spec)
			if r.ClientFound != tt.clientFound || r.ServerFound != tt.serverFnd || r.ClientOpens != tt.clientOpens || r.ServerOpens != tt.srvOpens {
				t.Errorf("found client %d server %d, opens client %d server %d; want %d %d, %d %d",
					r.ClientFound, r.ServerFound, r.ClientOpens, r.ServerOpens, tt.clientFound, tt.serverFnd, tt.clientOpens, tt.srvOpens)
			}
			if want := metric(100 * float64(tt.clientFound) / 3); math.Abs(float64(r.ClientPct-want)) > 1e-9 {
				t.Errorf("client %% = %v, want %v", r.ClientPct, want)
			}
		})
	}
}

func TestDataPathTable(t *testing.T) {
	churn, dp := config{Name: "tcp-w4"}, config{Name: "tcp-rr4", DataPath: true}
	rs := []*runResult{newResult(churn, "portlife", 1), newResult(dp, "portlife", 1)}
	rs[0].ConnRate = 12345
	rs[1].RTRate, rs[1].BPFNsPerRT, rs[1].BPFRunsPerRT = 33333, 865, 6
	var b strings.Builder
	printTable(&b, rs)
	churnPart, dpPart, ok := strings.Cut(b.String(), "data path (persistent connections, round trips; no churn):\n")
	if !ok {
		t.Fatalf("no data path table:\n%s", b.String())
	}
	if !strings.Contains(churnPart, "conn/s") || !strings.Contains(churnPart, "12345") || strings.Contains(churnPart, "tcp-rr4") {
		t.Errorf("churn table wrong:\n%s", churnPart)
	}
	lines := strings.Split(strings.TrimSpace(dpPart), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "BPF ns/rt") || !strings.Contains(lines[0], "runs/rt") {
		t.Fatalf("data path table wrong:\n%s", dpPart)
	}
	if f := strings.Fields(lines[1]); f[0] != "tcp-rr4" || !slices.Contains(f, "33333") || !slices.Contains(f, "865") || !slices.Contains(f, "6.00") {
		t.Errorf("data path row = %q", lines[1])
	}
	b.Reset()
	printTable(&b, rs[:1])
	if strings.Contains(b.String(), "data path") {
		t.Errorf("a data path table without a data path run:\n%s", b.String())
	}
}

// The hooks table gives each program's runs per connection (per round trip
// on the data path) and time per run, as medians over a group's runs.
func TestWriteHooks(t *testing.T) {
	run := func(conns int, dataPath bool, runs, ns uint64) *runResult {
		r := newResult(config{Name: "c", DataPath: dataPath}, "portlife", 0)
		r.DataPath = dataPath
		if dataPath {
			r.RoundTrips = int64(conns)
		} else {
			r.Conns = conns
		}
		r.Hooks = map[string]hookCost{"tcp_state": {Runs: runs, RunTimeNs: ns}}
		return r
	}
	tests := []struct {
		name string
		runs []*runResult
		want string
	}{
		{"per connection", []*runResult{run(1000, false, 6000, 1_800_000), run(1000, false, 6000, 2_400_000)},
			"c  portlife  tcp_state  6.00  300/350/400"},
		{"per round trip", []*runResult{run(500, true, 1000, 50_000)}, "c  portlife  tcp_state  2.00  50"},
		{"no bpf_stats", []*runResult{newResult(config{Name: "c"}, "portlife", 0)}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b strings.Builder
			writeHooks(&b, groupResults(tt.runs))
			var got string
			if lines := strings.Split(strings.TrimSpace(b.String()), "\n"); len(lines) == 3 {
				got = strings.Join(strings.Fields(lines[2]), "  ")
			}
			if want := strings.Join(strings.Fields(tt.want), "  "); got != want {
				t.Errorf("got %q, want %q in:\n%s", got, want, b.String())
			}
		})
	}
}
