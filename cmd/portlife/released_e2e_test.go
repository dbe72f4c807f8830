package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portlife/portlife/internal/kerneltest"
)

// A close that finds tcp_max_tw_buckets full leaves no TIME_WAIT: portlife
// reports its port released at once, as an overflow, and counts it in
// `tracing stopped`. The connection runs in a network namespace of the
// test's own, with no TIME_WAIT allowed.
func TestReleasedOverflow(t *testing.T) {
	requireRoot(t)
	p := start(t, "--output", "json", "--pid", fmt.Sprint(os.Getpid()), "--flush-interval", "10ms", "--released", "--released-interval", "200ms")
	ns := kerneltest.NewNetns(t, map[string]string{"tcp_max_tw_buckets": "0"})
	var lport uint16
	if err := ns.Do(func() error {
		ln, port, err := kerneltest.ListenLoopback(1)
		if err != nil {
			return err
		}
		defer unix.Close(ln)
		lport, err = kerneltest.CloseFirst(ln, port, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // a sweep or more
	if code := p.stop(t, os.Interrupt); code != 0 {
		t.Fatalf("exit code %d, want 0; stderr:\n%s", code, p.stderr.String())
	}

	var closes, releases []map[string]any
	sc := bufio.NewScanner(&p.stdout)
	for sc.Scan() {
		var ev map[string]any
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("not a JSON line: %q: %v", sc.Text(), err)
		}
		if int(ev["lport"].(float64)) != int(lport) || ev["direction"] != "outbound" {
			continue
		}
		switch ev["event"] {
		case "close":
			closes = append(closes, ev)
		case "released":
			releases = append(releases, ev)
			for _, f := range required["released"] {
				if _, ok := ev[f]; !ok {
					t.Errorf("released event without %q: %s", f, sc.Text())
				}
			}
		}
	}
	if len(closes) != 1 || len(releases) != 1 {
		t.Fatalf("%d closes and %d releases for port %d, want 1 and 1; stdout:\n%s", len(closes), len(releases), lport, p.stdout.String())
	}
	c, r := closes[0], releases[0]
	if r["release"] != "overflow" || r["start"] != c["ts"] || r["ts"] != c["ts"] || r["time_wait_ms"] != 0.0 || r["sock_cookie"] != c["sock_cookie"] || c["time_wait"] != true {
		t.Errorf("released %v for close %v: want an overflow at the close's time, of its socket", r, c)
	}
	stderr := p.stderr.String()
	if !strings.Contains(stderr, `"released":{"tracked":1,`) || !strings.Contains(stderr, `"overflow":1,`) || !strings.Contains(stderr, `"lost":0`) {
		t.Errorf("tracing stopped does not count one tracked close, released as an overflow, with nothing lost:\n%s", stderr)
	}
}
