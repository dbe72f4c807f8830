package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/portlife/portlife/internal/kerneltest"
	"golang.org/x/sys/unix"
)

// freePort is a loopback port nothing listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// sample is one line of the text exposition format.
type sample struct {
	name   string
	labels string // as written: `proto="tcp",direction="outbound"`
	value  float64
}

// scrape fetches /metrics and returns its body and its portlife_ samples.
func scrape(t *testing.T, port int) (string, []sample) {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scraping: %v %s", err, resp.Status)
	}
	var out []sample
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "portlife_") {
			continue
		}
		head, val, _ := strings.Cut(line, " ")
		name, labels, _ := strings.Cut(head, "{")
		v, err := strconv.ParseFloat(val, 64)
		if err != nil {
			t.Fatalf("bad sample %q", line)
		}
		out = append(out, sample{name, strings.TrimSuffix(labels, "}"), v})
	}
	return string(body), out
}

// scrapeUntil scrapes until done holds for the samples: the workload's
// events are all counted. Its stdout is a pipe this process reads, so
// portlife may be a while behind it.
func scrapeUntil(t *testing.T, port int, what string, done func([]sample) bool) (string, []sample) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		body, samples := scrape(t, port)
		if done(samples) {
			return body, samples
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited 20s for %s; the last scrape:\n%s", what, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sum adds the samples of name whose labels contain every one of want.
func sum(samples []sample, name string, want ...string) float64 {
	var n float64
next:
	for _, s := range samples {
		if s.name != name {
			continue
		}
		for _, w := range want {
			if !strings.Contains(s.labels, w) {
				continue next
			}
		}
		n += s.value
	}
	return n
}

// promtoolCheck lints the exposition with promtool, which make test
// installs (Debian's prometheus package).
func promtoolCheck(t *testing.T, body string) {
	t.Helper()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("promtool is missing: make test installs it (Debian's prometheus package)")
		}
		t.Skip("promtool is missing: run make deps")
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// A known workload, scraped while portlife runs: the counters are exactly
// the events written in the same run, and the exposition passes promtool.
func TestMetricsMatchEvents(t *testing.T) {
	requireRoot(t)
	const conns, refused = 50, 5
	port := freePort(t)
	// The workload runs in a process of its own: the scrapes are this
	// process's connections, which the filter leaves out.
	p := start(t, "--output", "json", "--comm", churnComm, "--flush-interval", "10ms", "--metrics-addr", strconv.Itoa(port))
	if !strings.Contains(p.stderr.String(), `"addr":"127.0.0.1:`+strconv.Itoa(port)) {
		t.Errorf("a port alone did not bind localhost; stderr:\n%s", p.stderr.String())
	}
	runChurn(t, conns, refused)
	body, samples := scrapeUntil(t, port, "the workload's events", func(s []sample) bool {
		return sum(s, "portlife_connections_closed_total", `proto="tcp"`) >= 2*conns &&
			sum(s, "portlife_connections_failed_total") >= refused
	})
	if code := p.stop(t, os.Interrupt); code != 0 {
		t.Fatalf("exit code %d; stderr:\n%s", code, p.stderr.String())
	}
	promtoolCheck(t, body)

	written := map[string]float64{}
	var lines float64
	for _, ev := range jsonLines(t, p.stdout.String()) {
		written[ev["event"].(string)]++
		if ev["event"] == "open" && ev["bind_before_connect"] == true {
			written["bbc"]++
		}
		lines++
	}
	// Without --released, no released series: zeros would read as "none
	// ended". Port accounting's gauges are there.
	if strings.Contains(body, "portlife_time_wait_released_total") || !strings.Contains(body, "\nportlife_tracked_sockets ") {
		t.Errorf("released series without --released, or no tracked sockets:\n%s", body)
	}
	for _, c := range []struct {
		metric string
		want   float64
	}{
		{"portlife_connections_opened_total", written["open"]},
		{"portlife_connections_closed_total", written["close"]},
		{"portlife_connections_failed_total", written["connect_failed"] + written["bind_failed"]},
		{"portlife_events_total", lines},
	} {
		if got := sum(samples, c.metric); got != c.want {
			t.Errorf("%s = %v, the run wrote %v", c.metric, got, c.want)
		}
	}
	for _, c := range []struct {
		metric string
		labels []string
		want   float64
	}{
		{"portlife_connections_opened_total", []string{`proto="tcp"`, `direction="outbound"`}, conns},
		{"portlife_connections_opened_total", []string{`proto="tcp"`, `direction="inbound"`}, conns},
		{"portlife_connections_closed_total", []string{`proto="tcp"`, `direction="outbound"`}, conns},
		{"portlife_connection_lifetime_seconds_count", []string{`proto="tcp"`, `direction="outbound"`}, conns},
		{"portlife_connections_failed_total", []string{`proto="tcp"`, `direction="outbound"`, `reason="refused"`}, refused},
		{"portlife_time_wait_entered_total", []string{`direction="outbound"`}, conns},
		{"portlife_events_lost_total", nil, 0},
		{"portlife_build_info", nil, 1},
		{"portlife_connections_bind_before_connect_total", nil, written["bbc"]},
	} {
		if got := sum(samples, c.metric, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.metric, c.labels, got, c.want)
		}
	}
}

// Connections to 10,000 distinct destinations add no series but the top
// keys' pressure: only the 20 most pressed keys have an address label. In
// a namespace of the test's own, each destination gets a connection left
// in TIME_WAIT (a port held: a port key each) and a refused connect. The
// series stay under the README's bound.
func TestMetricsCardinalityBounded(t *testing.T) {
	requireRoot(t)
	const dests = 10000
	ns := kerneltest.NewNetns(t, map[string]string{"tcp_tw_reuse": "0"})
	var ln int
	if err := ns.Do(func() (err error) {
		// 127.0.0.0/8 is all loopback: one listener on the wildcard serves
		// every address of it.
		ln, err = tcpListen(netip.MustParseAddrPort("0.0.0.0:9"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	// 50,000 events in seconds, read through a pipe on a loaded host: a
	// ring that holds them all, so the counts are exact.
	p := start(t, "--output", "json", "--netns", fmt.Sprint(ns.Inode), "--flush-interval", "10ms", "--ring-buffer", "64MiB", "--metrics-addr", "127.0.0.1:"+strconv.Itoa(port))
	_, before := scrape(t, port)
	if err := ns.Do(func() error {
		for i := range dests {
			a := netip.AddrFrom4([4]byte{127, byte(1 + i>>16), byte(i >> 8), byte(i)})
			if err := timeWait(ln, netip.AddrPortFrom(a, 9), false); err != nil {
				return err
			}
			if fd, err := connectTo(netip.AddrPortFrom(a, 10), false); err == nil {
				unix.Close(fd)
				return fmt.Errorf("%v:10 accepted", a)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	body, after := scrapeUntil(t, port, "every refused connect", func(s []sample) bool {
		return sum(s, "portlife_connections_failed_total", `reason="refused"`) >= dests &&
			sum(s, "portlife_connections_closed_total", `direction="outbound"`) >= dests
	})
	if code := p.stop(t, os.Interrupt); code != 0 {
		t.Fatalf("exit code %d; stderr:\n%s", code, p.stderr.String())
	}
	promtoolCheck(t, body)
	if got := sum(after, "portlife_connections_failed_total", `reason="refused"`); got != dests {
		var failed []sample
		for _, s := range after {
			if s.name == "portlife_connections_failed_total" || s.name == "portlife_events_lost_total" || s.name == "portlife_skipped_runs_total" {
				failed = append(failed, s)
			}
		}
		t.Errorf("%v refused connects counted, want %d: %v; stderr:\n%s", got, dests, failed, p.stderr.String())
	}
	// The pressure of the 20 most pressed keys, of the thousands tracked:
	// each destination's key, and the namespace's bind pool.
	for _, m := range []string{"portlife_port_pressure_ratio", "portlife_ports_used", "portlife_ports_capacity"} {
		if n := count(after, m); n != 20 {
			t.Errorf("%d %s series, want the 20 most pressed keys'", n, m)
		}
	}
	if keys := sum(after, "portlife_port_keys"); keys < 20 {
		t.Errorf("%v port keys tracked, want thousands", keys)
	}
	t.Logf("%d portlife series before, %d after", len(before), len(after))
	// The only new series: the refused connects' own, and the top keys'.
	if len(after) > len(before)+1+3*20 {
		t.Errorf("%d portlife series after %d destinations, %d before", len(after), dests, len(before))
	}
	// README: 145 series, 2 per consumer (metrics, ports), 6 per failure
	// reason seen (refused), 3 per top key (20).
	const bound = 145 + 2*2 + 6 + 3*20
	if len(after) > bound {
		t.Errorf("%d portlife series, above the bound of %d", len(after), bound)
	}
}

// Port accounting and released events on /metrics, in a namespace of the
// test's own with 100 ports, no TIME_WAIT reuse, and no TIME_WAIT at all
// (tcp_max_tw_buckets 0: each close is released at once, an overflow): 5
// connections closed by us, 20 held open to one destination, 3
// bind-then-connect ones held open to another. The gauges are the keys'
// exact U and C, the counters the events written.
func TestMetricsPortsAndReleased(t *testing.T) {
	requireRoot(t)
	ns := kerneltest.NewNetns(t, map[string]string{"ip_local_port_range": "40000 40099", "tcp_tw_reuse": "0", "tcp_max_tw_buckets": "0"})
	dst1, dst2, ln1, ln2 := twoListeners(t, ns)
	port := freePort(t)
	// The scrapes are this process's too, outside the namespace: --netns
	// leaves them out.
	p := start(t, "--output", "json", "--netns", fmt.Sprint(ns.Inode), "--flush-interval", "10ms", "--released", "--released-interval", "200ms", "--metrics-addr", strconv.Itoa(port))
	const closed, held, bound = 5, 20, 3
	if err := ns.Do(func() error { return pressWorkload(ln1, ln2, dst1, dst2, closed, held, bound) }); err != nil {
		t.Fatal(err)
	}
	inode := fmt.Sprintf(`netns="%d"`, ns.Inode)
	perDest := []string{`mechanism="per_destination"`, inode, `local="127.0.0.1"`, `destination="127.0.0.1:5000"`}
	pool := []string{`mechanism="bind_pool"`, inode, `local="0.0.0.0"`, `destination=""`}
	body, samples := scrapeUntil(t, port, "the released closes and the held ports", func(s []sample) bool {
		return sum(s, "portlife_time_wait_released_total") >= closed && sum(s, "portlife_ports_used", pool...) == held+bound &&
			sum(s, "portlife_ports_used", perDest...) == held
	})
	if code := p.stop(t, os.Interrupt); code != 0 {
		t.Fatalf("exit code %d; stderr:\n%s", code, p.stderr.String())
	}
	promtoolCheck(t, body)
	written := map[string]float64{}
	for _, ev := range jsonLines(t, p.stdout.String()) {
		kind := ev["event"].(string)
		written[kind]++
		if kind == "released" {
			written["released/"+ev["release"].(string)]++
		}
		if kind == "open" && ev["bind_before_connect"] == true {
			written["bbc/"+ev["direction"].(string)]++
		}
	}
	// Mostly overflows; a close whose port the next connect took before a
	// sweep is told as reused.
	if written["released"] != closed || written["bbc/outbound"] != bound {
		t.Fatalf("the run wrote %v: want %d released and %d bind-before-connect opens", written, closed, bound)
	}
	for _, c := range []struct {
		metric string
		labels []string
		want   float64
	}{
		{"portlife_time_wait_released_total", []string{`how="overflow"`}, written["released/overflow"]},
		{"portlife_time_wait_released_total", []string{`how="reused"`}, written["released/reused"]},
		{"portlife_time_wait_released_total", []string{`how="expired"`}, written["released/expired"]},
		{"portlife_time_wait_released_total", []string{`how="killed"`}, written["released/killed"]},
		{"portlife_time_wait_released_total", nil, written["released"]},
		{"portlife_connections_bind_before_connect_total", []string{`proto="tcp"`, `direction="outbound"`}, written["bbc/outbound"]},
		{"portlife_connections_bind_before_connect_total", nil, written["bbc/outbound"]},
		// U: the held sockets; C: 100 less the ports bind() took.
		{"portlife_ports_used", perDest, held},
		{"portlife_ports_capacity", perDest, 100 - bound},
		{"portlife_port_pressure_ratio", perDest, float64(held) / (100 - bound)},
		// The pool holds every port of the namespace.
		{"portlife_ports_used", pool, held + bound},
		{"portlife_ports_capacity", pool, 100},
		{"portlife_port_pressure_ratio", pool, float64(held+bound) / 100},
		{"portlife_tracked_sockets", nil, held + bound},
		{"portlife_port_keys", nil, 2},
		{"portlife_port_accounting_left_out_total", nil, 0},
	} {
		if got := sum(samples, c.metric, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.metric, c.labels, got, c.want)
		}
	}
	if n := count(samples, "portlife_port_pressure_ratio"); n != 2 {
		t.Errorf("%d pressure series, want one per key holding a port, 2:\n%s", n, body)
	}
}

// count is how many series of name there are.
func count(samples []sample, name string) int {
	n := 0
	for _, s := range samples {
		if s.name == name {
			n++
		}
	}
	return n
}
