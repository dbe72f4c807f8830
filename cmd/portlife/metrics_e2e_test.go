package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
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
		lines++
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
	} {
		if got := sum(samples, c.metric, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.metric, c.labels, got, c.want)
		}
	}
}

// Connections to 10,000 distinct destinations add no series: no label
// holds an address or a port. The series stay under the README's bound.
func TestMetricsCardinalityBounded(t *testing.T) {
	requireRoot(t)
	const dests = 10000
	port := freePort(t)
	p := start(t, "--output", "json", "--events", "connect_failed", "--pid", fmt.Sprint(os.Getpid()), "--flush-interval", "10ms", "--metrics-addr", "127.0.0.1:"+strconv.Itoa(port))
	_, before := scrape(t, port)
	for i := range dests {
		// 127.0.0.0/8 is all loopback: each address refuses at once.
		addr := fmt.Sprintf("127.%d.%d.%d:9", 1+i>>16, i>>8&0xff, i&0xff)
		if c, err := net.DialTimeout("tcp4", addr, time.Second); err == nil {
			c.Close()
			t.Fatalf("%s accepted", addr)
		}
	}
	body, after := scrapeUntil(t, port, "every refused connect", func(s []sample) bool {
		return sum(s, "portlife_connections_failed_total", `reason="refused"`) >= dests
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
	// The only new series: the refused connects' own.
	if len(after) > len(before)+1 {
		t.Errorf("%d portlife series after %d destinations, %d before", len(after), dests, len(before))
	}
	const bound = 140 + 6 // README: 138 series, 2 per consumer (metrics), 6 per failure reason seen (refused)
	if len(after) > bound {
		t.Errorf("%d portlife series, above the bound of %d", len(after), bound)
	}
}
