package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/event"
	"github.com/portlife/portlife/internal/kerneltest"
)

// churn makes n loopback connections to a listener of its own, the i-th
// held open for lifetime(i) before the client closes it, and refused
// connects to a port nothing listens on. It returns the listener's port
// and the refused port.
func churn(t *testing.T, n int, lifetime func(i int) time.Duration, refused int) (port, deadPort int) {
	t.Helper()
	port, deadPort, err := churnConns(n, lifetime, refused)
	if err != nil {
		t.Fatal(err)
	}
	return port, deadPort
}

func churnConns(n int, lifetime func(i int) time.Duration, refused int) (port, deadPort int, err error) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return 0, 0, err
	}
	defer ln.Close()
	dead, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return 0, 0, err
	}
	deadPort = dead.Addr().(*net.TCPAddr).Port
	dead.Close()
	for i := range n {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			return 0, 0, err
		}
		s, err := ln.Accept()
		if err != nil {
			return 0, 0, err
		}
		time.Sleep(lifetime(i))
		c.Close()
		s.Read(make([]byte, 1))
		s.Close()
	}
	for range refused {
		if c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", deadPort)); err == nil {
			c.Close()
			return 0, 0, fmt.Errorf("port %d was meant to refuse", deadPort)
		}
	}
	return ln.Addr().(*net.TCPAddr).Port, deadPort, nil
}

// churnEnv makes the test binary a churn helper: a process of its own name
// (churnComm), so that a test can trace it alone while it scrapes
// /metrics itself. Its arguments: connections, refused connects.
const (
	churnEnv  = "PORTLIFE_TEST_CHURN"
	churnComm = "pl-churn"
)

func churnHelper(args []string) int {
	if err := unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&append([]byte(churnComm), 0)[0])), 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	n, _ := strconv.Atoi(args[0])
	refused, _ := strconv.Atoi(args[1])
	if _, _, err := churnConns(n, func(i int) time.Duration { return time.Duration(i%5) * time.Millisecond }, refused); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// runChurn runs the churn helper to its end.
func runChurn(t *testing.T, n, refused int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], strconv.Itoa(n), strconv.Itoa(refused))
	cmd.Env = append(os.Environ(), churnEnv+"=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("churn helper: %v\n%s", err, out)
	}
}

// jsonLines reads portlife's JSON output.
func jsonLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var evs []map[string]any
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var ev map[string]any
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("not a JSON line: %q: %v", sc.Text(), err)
		}
		evs = append(evs, ev)
	}
	return evs
}

func num(ev map[string]any, key string) float64 {
	f, _ := ev[key].(float64)
	return f
}

// A known workload, traced with --summary: the summaries count exactly the
// per-connection events written beside them, and their lifetime
// percentiles are within the stated error of the exact ones. One interval
// long enough to hold the run: the last, partial one is published at exit.
func TestSummaryCountsAndPercentiles(t *testing.T) {
	requireRoot(t)
	const conns, refused = 60, 5
	p := start(t, "--output", "json", "--pid", fmt.Sprint(os.Getpid()), "--flush-interval", "10ms", "--summary", "1h")
	port, deadPort := churn(t, conns, func(i int) time.Duration { return time.Duration(i%20) * 3 * time.Millisecond }, refused)
	// The last sockets' ends reach the ring: on a loaded machine the
	// softirq that destroys them can run a good while after close().
	time.Sleep(time.Second)
	if code := p.stop(t, os.Interrupt); code != 0 {
		t.Fatalf("exit code %d; stderr:\n%s", code, p.stderr.String())
	}
	evs := jsonLines(t, p.stdout.String())

	// The truth, from the per-connection events.
	counts := map[string]float64{} // event/direction, for our destinations
	var lifetimes []float64        // outbound closes to port, in ms
	totals := map[string]float64{}
	for _, ev := range evs {
		kind := ev["event"].(string)
		if kind == "summary" {
			continue
		}
		totals[kind]++
		dir := ev["direction"].(string)
		ours := dir == "outbound" && (num(ev, "rport") == float64(port) || num(ev, "rport") == float64(deadPort)) ||
			dir == "inbound" && num(ev, "lport") == float64(port)
		if !ours {
			continue
		}
		counts[kind+"/"+dir]++
		if kind == "close" && dir == "outbound" {
			lifetimes = append(lifetimes, num(ev, "duration_ms"))
		}
	}
	if counts["open/outbound"] != conns || counts["close/outbound"] != conns || counts["connect_failed/outbound"] != refused || counts["close/inbound"] != conns {
		t.Fatalf("per-connection events %v: the workload was not all seen; stderr:\n%s\nstdout:\n%s", counts, p.stderr.String(), p.stdout.String())
	}

	var out, in, failed map[string]any
	sums := map[string]float64{}
	for _, ev := range evs {
		if ev["event"] != "summary" {
			continue
		}
		for _, k := range []string{"opened", "closed", "failed"} {
			sums[k] += num(ev, k)
		}
		switch {
		case ev["direction"] == "outbound" && num(ev, "rport") == float64(port):
			out = ev
		case ev["direction"] == "outbound" && num(ev, "rport") == float64(deadPort):
			failed = ev
		case ev["direction"] == "inbound" && num(ev, "lport") == float64(port):
			in = ev
		}
	}
	if out == nil || in == nil || failed == nil {
		t.Fatalf("no summary rows for the workload's keys; stdout:\n%s", p.stdout.String())
	}
	// Every row's counts add up to the events written in the same run.
	if sums["opened"] != totals["open"] || sums["closed"] != totals["close"] || sums["failed"] != totals["connect_failed"]+totals["bind_failed"] {
		t.Errorf("summaries add up to %v, the run wrote %v", sums, totals)
	}
	for _, c := range []struct {
		row                    map[string]any
		opened, closed, failed float64
	}{{out, conns, conns, 0}, {in, conns, conns, 0}, {failed, 0, 0, refused}} {
		if num(c.row, "opened") != c.opened || num(c.row, "closed") != c.closed || num(c.row, "failed") != c.failed {
			t.Errorf("row %v: want opened %v closed %v failed %v", c.row, c.opened, c.closed, c.failed)
		}
	}
	if f := failed["failures"].(map[string]any); fmt.Sprint(f) != fmt.Sprint(map[string]any{"refused": float64(refused)}) {
		t.Errorf("failures %v, want %d refused", f, refused)
	}
	if comm, _ := os.ReadFile("/proc/self/comm"); out["comm"] != strings.TrimSpace(string(comm)) {
		t.Errorf("comm %v, want ours, %q", out["comm"], comm)
	}
	slices.Sort(lifetimes)
	under := 0
	for _, l := range lifetimes {
		if l < 1000 {
			under++
		}
	}
	if num(out, "lifetimes") != conns || num(out, "under_1s_share") != float64(under)/conns {
		t.Errorf("lifetimes %v, under_1s_share %v; want %d, %v", out["lifetimes"], out["under_1s_share"], conns, float64(under)/conns)
	}
	for _, q := range []struct {
		key string
		q   float64
	}{{"lifetime_p50_ms", 0.5}, {"lifetime_p90_ms", 0.9}, {"lifetime_p99_ms", 0.99}} {
		exact := lifetimes[int(q.q*float64(len(lifetimes)-1))]
		got := num(out, q.key)
		// duration_ms is rounded to the µs: allow that beside the sketch's error.
		if math.Abs(got-exact) > event.LifetimeError*exact+0.002 {
			t.Errorf("%s = %v, exact %v: beyond the stated %v", q.key, got, exact, event.LifetimeError)
		}
	}
}

// --summary-only: summaries every interval, and not one per-connection
// event; their counts are still the workload's.
func TestSummaryOnly(t *testing.T) {
	requireRoot(t)
	const conns = 30
	p := start(t, "--output", "json", "--pid", fmt.Sprint(os.Getpid()), "--flush-interval", "10ms", "--summary", "200ms", "--summary-only")
	port, _ := churn(t, conns, func(i int) time.Duration { return 10 * time.Millisecond }, 0)
	time.Sleep(time.Second) // intervals go by, and the last sockets' ends reach the ring
	if code := p.stop(t, os.Interrupt); code != 0 {
		t.Fatalf("exit code %d; stderr:\n%s", code, p.stderr.String())
	}
	intervals := map[string]bool{}
	var opened, closed float64
	for _, ev := range jsonLines(t, p.stdout.String()) {
		if ev["event"] != "summary" {
			t.Fatalf("a per-connection event with --summary-only: %v", ev)
		}
		intervals[ev["ts"].(string)] = true
		if ev["direction"] == "outbound" && num(ev, "rport") == float64(port) {
			opened += num(ev, "opened")
			closed += num(ev, "closed")
		}
	}
	if opened != conns || closed != conns {
		t.Errorf("summaries count %v opened and %v closed, want %d each", opened, closed, conns)
	}
	if len(intervals) < 2 {
		t.Errorf("summaries of %d intervals, want several over about a second", len(intervals))
	}
}

// Each outbound summary row carries its port key's pressure as the interval
// ends, from port accounting, by the kernel's rule for how the row's
// connections took their ports. In a namespace of the test's own with 100
// ports and no TIME_WAIT reuse: 10 connections to one destination closed
// into TIME_WAIT and 27 held open (per_destination: U 37, of C = 100 less
// the 3 ports bind() took), and 3 bind-then-connect ones to another
// destination held open (bind_pool: U = every port held, 40 of 100).
func TestSummaryPortPressure(t *testing.T) {
	requireRoot(t)
	ns := kerneltest.NewNetns(t, map[string]string{"ip_local_port_range": "40000 40099", "tcp_tw_reuse": "0"})
	dst1, dst2, ln1, ln2 := twoListeners(t, ns)
	p := start(t, "--output", "json", "--pid", fmt.Sprint(os.Getpid()), "--flush-interval", "10ms", "--summary", "1h")
	const closed, held, bound = 10, 27, 3
	if err := ns.Do(func() error { return pressWorkload(ln1, ln2, dst1, dst2, closed, held, bound) }); err != nil {
		t.Fatal(err)
	}
	if err := waitTimeWait(ns, 40000, 40099, closed); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // the last events reach accounting
	if code := p.stop(t, os.Interrupt); code != 0 {
		t.Fatalf("exit code %d; stderr:\n%s", code, p.stderr.String())
	}
	rows := map[string]map[string]any{}
	for _, ev := range jsonLines(t, p.stdout.String()) {
		if ev["event"] != "summary" || num(ev, "netns") != 0 && uint32(num(ev, "netns")) != ns.Inode {
			continue
		}
		switch {
		case ev["direction"] == "outbound":
			rows[fmt.Sprintf("%v:%v", ev["raddr"], ev["rport"])] = ev
		case ev["direction"] == "inbound" && num(ev, "lport") == 5000:
			rows["inbound"] = ev
		}
	}
	for _, c := range []struct {
		row       string
		opened    float64
		mechanism string
		used      float64
		capacity  float64
		pressure  float64
		timeWait  float64
	}{
		{"127.0.0.1:5000", closed + held, "per_destination", closed + held, 100 - bound, 0.381, closed},
		{"127.0.0.2:5000", bound, "bind_pool", closed + held + bound, 100, 0.4, closed},
	} {
		r := rows[c.row]
		if r == nil {
			t.Errorf("no summary row to %s; stdout:\n%s", c.row, p.stdout.String())
			continue
		}
		if num(r, "opened") != c.opened || r["mechanism"] != c.mechanism || num(r, "used") != c.used || num(r, "capacity") != c.capacity ||
			num(r, "pressure") != c.pressure || num(r, "time_wait_ports") != c.timeWait {
			t.Errorf("row to %s: %v; want opened %v, %s %v of %v (%v), %v in TIME_WAIT", c.row, r, c.opened, c.mechanism, c.used, c.capacity, c.pressure, c.timeWait)
		}
	}
	// An inbound row takes no port of the range: it has no key.
	if r := rows["inbound"]; r == nil || r["mechanism"] != nil || r["pressure"] != nil {
		t.Errorf("inbound row %v: want one, without a port key", r)
	}
}
