package main

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/portlife/portlife/internal/event"
	"github.com/portlife/portlife/internal/store"
)

// now is a fixed "now" for the parsers: 14:30 local time.
var now = time.Date(2026, 12, 1, 14, 30, 0, 0, time.Local)

func TestParseWhen(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Time
	}{
		{"10m", now.Add(-10 * time.Minute)},
		{"1h30m", now.Add(-90 * time.Minute)},
		{"2d", now.Add(-48 * time.Hour)},
		{"14:05", time.Date(2026, 12, 1, 14, 5, 0, 0, time.Local)},
		{"14:05:30.25", time.Date(2026, 12, 1, 14, 5, 30, 250e6, time.Local)},
		{"23:50", time.Date(2026, 11, 30, 23, 50, 0, 0, time.Local)}, // later today is yesterday's
		{"2026-11-30 08:00", time.Date(2026, 11, 30, 8, 0, 0, 0, time.Local)},
		{"2026-11-30T08:00:01", time.Date(2026, 11, 30, 8, 0, 1, 0, time.Local)},
		{"2026-11-30", time.Date(2026, 11, 30, 0, 0, 0, 0, time.Local)},
		{"2026-12-01T14:05:00Z", time.Date(2026, 12, 1, 14, 5, 0, 0, time.UTC)},
		{"2026-12-01T14:05:00.5+02:00", time.Date(2026, 12, 1, 12, 5, 0, 500e6, time.UTC)},
		{"@1764597930.5", time.Unix(1764597930, 500e6)},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseWhen(tc.in, now)
			if err != nil || !got.Equal(tc.want) {
				t.Errorf("parseWhen(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
		})
	}
	for _, bad := range []string{"", "yesterday", "-5m", "25:00", "2026-13-01", "@x", "@-1", "5x", "d", "99999d"} {
		if got, err := parseWhen(bad, now); err == nil {
			t.Errorf("parseWhen(%q) = %v, want an error", bad, got)
		}
	}
}

func parseQuery(args ...string) (queryOptions, error) {
	return parseQueryFlags(args, false, now, func(*pflag.FlagSet) {})
}

func TestParseQueryFlags(t *testing.T) {
	o, err := parseQuery("--port", "60503", "--at", "14:05", "--event", "close", "--comm", "curl", "--reason", "refused,timeout", "--raddr", "10.0.0.0/8")
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 12, 1, 14, 5, 0, 0, time.Local)
	if !o.q.Since.Equal(at) || !o.q.Until.Equal(at) {
		t.Errorf("--at 14:05 gave since %v until %v, want both %v", o.q.Since, o.q.Until, at)
	}
	if len(o.q.Ports) != 1 || o.q.Ports[0] != (event.PortRange{Lo: 60503, Hi: 60503}) ||
		len(o.q.Filter.Kinds) != 1 || o.q.Filter.Kinds[0] != event.KindClose || o.q.Filter.Comm != "curl" ||
		strings.Join(o.q.Reasons, ",") != "refused,timeout" || len(o.q.Filter.RemoteNets) != 1 {
		t.Errorf("parsed %+v", o.q)
	}
	if o.path != defaultStore || o.output != "json" {
		t.Errorf("store %q output %q, want the defaults %q and json off a terminal", o.path, o.output, defaultStore)
	}

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"at and since", []string{"--at", "1h", "--since", "2h"}, "--at is one moment"},
		{"until before since", []string{"--since", "1h", "--until", "2h"}, "before --since"},
		{"empty comm", []string{"--comm", ""}, "empty"},
		{"empty reason", []string{"--reason", ","}, "empty reason"},
		{"top by what", []string{"--top", "pid"}, "want comm or raddr or rport"},
		{"argument", []string{"60503"}, "takes only flags"},
		{"bad event", []string{"--event", "opened"}, "unknown event"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := parseQuery(tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}

// Any command line parseQueryFlags accepts makes a query the store runs:
// the flags and the SQL they build agree. The seeds run in make test.
func FuzzQueryFlags(f *testing.F) {
	for _, seed := range []string{
		"--port 60503 --at 14:05",
		"--top comm --since 1h --rport 443,8000-8999",
		"--top raddr --raddr 10.0.0.0/8 --raddr ::1 --event connect_failed --reason refused",
		"--top rport --proto udp --family 6 --direction inbound --ephemeral-only --min-duration 10ms",
		"--lport 1-65535 --pid 1 --comm x --since 2026-12-01 --until @1900000000 --output text",
		"--at 2026-12-01T14:05:00Z --events open,close,bind_failed",
	} {
		f.Add(seed)
	}
	path := filepath.Join(f.TempDir(), "history.db")
	w, err := store.Open(context.Background(), store.DefaultConfig(path))
	if err != nil {
		f.Fatal(err)
	}
	w.Close()
	r, err := store.OpenReader(context.Background(), path)
	if err != nil {
		f.Fatal(err)
	}
	defer r.Close()
	f.Fuzz(func(t *testing.T, line string) {
		o, err := parseQuery(strings.Fields(line)...)
		if err != nil {
			if errors.Is(err, pflag.ErrHelp) {
				return
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("a usage error of more than one line: %q", err)
			}
			return
		}
		if o.top != "" {
			_, err = r.Top(context.Background(), &o.q, o.top)
		} else {
			_, err = r.Lifetimes(context.Background(), &o.q, func(*event.Event) error { return nil })
		}
		if err != nil {
			t.Errorf("%q parsed, but its query failed: %v", line, err)
		}
	})
}

// Any moment parseWhen accepts is a real time, and a duration ago is not in
// the future.
func FuzzParseWhen(f *testing.F) {
	for _, s := range []string{"10m", "2d", "14:05", "14:05:30.250", "2026-12-01 14:05", "2026-12-01T14:05:00Z", "@1764597930.5", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := parseWhen(s, now)
		if err != nil {
			return
		}
		if got.IsZero() {
			t.Errorf("parseWhen(%q) accepted it as the zero time, which means no bound", s)
		}
		if _, derr := time.ParseDuration(strings.TrimSpace(s)); derr == nil && got.After(now) {
			t.Errorf("parseWhen(%q) = %v: a duration ago in the future", s, got)
		}
	})
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"1GiB": 1 << 30, "200MiB": 200 << 20, "512KiB": 512 << 10, "3G": 3 << 30, "1TiB": 1 << 40, "300000": 300000} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0", "-1MiB", "1.5GiB", "2TiB", "lots"} {
		if got, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", bad, got)
		}
	}
}

// Store flags: off by default, the budget checked before anything loads.
func TestStoreFlags(t *testing.T) {
	o, err := parse()
	if err != nil || o.store.cfg.Path != "" {
		t.Fatalf("store %q, %v: want off by default", o.store.cfg.Path, err)
	}
	o, err = parse("--store", "/tmp/h.db", "--store-max-size", "200MiB", "--store-max-age", "24h")
	if err != nil || o.store.cfg.Path != "/tmp/h.db" || o.store.cfg.MaxSize != 200<<20 || o.store.cfg.MaxAge != 24*time.Hour {
		t.Errorf("parsed %+v, %v", o.store.cfg, err)
	}
	for _, args := range [][]string{
		{"--store", "/tmp/h.db", "--store-max-size", "64KiB"},
		{"--store", "/tmp/h.db", "--store-max-age", "0s"},
	} {
		if _, err := parse(args...); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}

// Any size parseSize accepts is positive and at most 1TiB.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"1GiB", "512KiB", "1T", "300000", "9223372036854775807", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if n, err := parseSize(s); err == nil && (n <= 0 || n > 1<<40) {
			t.Errorf("parseSize(%q) = %d", s, n)
		}
	})
}
