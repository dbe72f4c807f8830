package main

import (
	"encoding/json"
	"flag"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
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
