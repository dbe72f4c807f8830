package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/portlife/portlife/internal/encode"
	"github.com/portlife/portlife/internal/event"
	"github.com/portlife/portlife/internal/store"
)

// defaultStore is where the systemd unit keeps the history.
const defaultStore = "/var/lib/portlife/history.db"

// queryOptions is the parsed command line of `portlife query`.
type queryOptions struct {
	path   string
	output string
	top    string
	q      store.Query
}

func parseQueryFlags(args []string, stdoutIsTerminal bool, now time.Time, usage func(*pflag.FlagSet)) (queryOptions, error) {
	fs := pflag.NewFlagSet("portlife query", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.Usage = func() { usage(fs) }
	// --event reads better for one kind; trace's flag is --events.
	fs.SetNormalizeFunc(func(_ *pflag.FlagSet, name string) pflag.NormalizedName {
		if name == "event" {
			name = "events"
		}
		return pflag.NormalizedName(name)
	})

	o := queryOptions{}
	var at, since, until time.Time
	fs.StringVar(&o.path, "store", defaultStore, "the store portlife trace --store writes")
	fs.Var(event.PortRangesValue(&o.q.Ports, "port ranges"), "port", "only lifetimes with this port at either end, local or remote, e.g. 60503 (repeatable, up to 8)")
	addFilterFlags(fs, &o.q.Filter)
	fs.Var(&reasonsValue{&o.q.Reasons}, "reason", "only failures with this reason, e.g. refused, no_ephemeral_port, address_in_use (repeatable)")
	fs.Var(timeValue{&at, now}, "at", "only lifetimes that held their port at this moment, TIME_WAIT included: 14:05, 14:05:30, 2026-12-01 14:05, RFC 3339, or 10m (ago)")
	fs.Var(timeValue{&since, now}, "since", "only lifetimes that held their port at or after this time (same forms as --at), e.g. 1h")
	fs.Var(timeValue{&until, now}, "until", "only lifetimes that held their port at or before this time (same forms as --at)")
	fs.Var(&choiceValue{p: &o.output, choices: []string{"text", "json"}}, "output", "text (the table trace prints) or json (the events' schema); default text on a terminal, json otherwise")
	fs.Var(&choiceValue{p: &o.top, choices: []string{"comm", "raddr", "rport"}}, "top", "rank the top churners by comm, raddr or rport: lifetimes, failures and lifetime percentiles")

	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q: portlife query takes only flags", fs.Arg(0))
	}
	if !at.IsZero() {
		if !since.IsZero() || !until.IsZero() {
			return o, errors.New("--at is one moment: leave out --since and --until with it")
		}
		since, until = at, at
	}
	if !since.IsZero() && !until.IsZero() && until.Before(since) {
		return o, fmt.Errorf("--until %s is before --since %s", until.Format(time.RFC3339), since.Format(time.RFC3339))
	}
	o.q.Since, o.q.Until = since, until
	o.output = defaultTo(o.output, "text", "json", stdoutIsTerminal)
	return o, o.q.Filter.Validate()
}

func runQuery(ctx context.Context, args []string, stdout, stderr *os.File) int {
	opts, err := parseQueryFlags(args, isTerminal(stdout), time.Now(), func(fs *pflag.FlagSet) {
		fmt.Fprintf(stderr, "Usage: portlife query [flags]\n\nAsks the history portlife trace --store keeps: which process held a port, when, and who churns.\n\nFlags:\n%s", fs.FlagUsages())
	})
	switch {
	case errors.Is(err, pflag.ErrHelp):
		return exitOK
	case err != nil:
		fmt.Fprintf(stderr, "portlife query: %v (see portlife query --help)\n", err)
		return exitUsage
	}
	n, err := query(ctx, opts, stdout)
	switch {
	case err != nil:
		fmt.Fprintf(stderr, "portlife query: %v\n", err)
		return exitError
	case n == 0:
		fmt.Fprintln(stderr, "portlife query: no lifetimes match")
	}
	return exitOK
}

// query writes what opts asks for and returns how many lines of results.
func query(ctx context.Context, opts queryOptions, stdout io.Writer) (int, error) {
	r, err := store.OpenReader(ctx, opts.path)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	w := bufio.NewWriterSize(stdout, 64<<10)
	var n int
	if opts.top != "" {
		n, err = writeTop(ctx, r, opts, w)
	} else {
		n, err = writeLifetimes(ctx, r, opts, w)
	}
	return n, errors.Join(err, w.Flush())
}

func writeLifetimes(ctx context.Context, r *store.Reader, opts queryOptions, w *bufio.Writer) (int, error) {
	var enc interface {
		Append([]byte, *event.Event) []byte
	} = &encode.JSON{}
	if opts.output == "text" {
		enc = &encode.Text{}
	}
	buf := make([]byte, 0, 1024)
	return r.Lifetimes(ctx, &opts.q, func(e *event.Event) error {
		buf = enc.Append(buf[:0], e)
		_, err := w.Write(buf)
		return err
	})
}

func writeTop(ctx context.Context, r *store.Reader, opts queryOptions, w *bufio.Writer) (int, error) {
	rows, err := r.Top(ctx, &opts.q, opts.top)
	if err != nil || len(rows) == 0 {
		return 0, err
	}
	if opts.output == "json" {
		for _, row := range rows {
			fmt.Fprintf(w, `{%q:%s,"count":%d,"failed":%d,"p50_ms":%s,"p90_ms":%s,"p99_ms":%s}`+"\n",
				opts.top, topKeyJSON(opts.top, row.Key), row.Count, row.Failed, millis(row.P50), millis(row.P90), millis(row.P99))
		}
		return len(rows), nil
	}
	width := len(opts.top)
	for _, row := range rows {
		width = max(width, len(row.Key))
	}
	fmt.Fprintf(w, "%-*s %8s %8s %9s %9s %9s\n", width, strings.ToUpper(opts.top), "COUNT", "FAILED", "P50", "P90", "P99")
	for _, row := range rows {
		fmt.Fprintf(w, "%-*s %8d %8d %9s %9s %9s\n", width, printable(row.Key), row.Count, row.Failed, human(row.P50), human(row.P90), human(row.P99))
	}
	return len(rows), nil
}

// topKeyJSON is a key as its field is typed in events: rport a number.
func topKeyJSON(by, key string) string {
	if by == "rport" {
		return key
	}
	return strconv.Quote(key)
}

// millis is a percentile in JSON: null when no close had its start.
func millis(d time.Duration) string {
	if d <= 0 {
		return "null"
	}
	return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', -1, 64)
}

// human writes a lifetime percentile: "-" when no close had its start.
func human(d time.Duration) string {
	switch {
	case d <= 0:
		return "-"
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return d.Round(100 * time.Microsecond).String()
	}
	return d.Round(10 * time.Millisecond).String()
}

// reasonsValue parses --reason: failure reasons, comma-separated.
type reasonsValue struct{ p *[]string }

func (v *reasonsValue) Set(s string) error {
	for _, r := range strings.Split(s, ",") {
		r = strings.TrimSpace(r)
		if r == "" {
			return errors.New("an empty reason: leave the flag out to match every failure")
		}
		*v.p = append(*v.p, r)
	}
	return nil
}

func (v *reasonsValue) String() string { return strings.Join(*v.p, ",") }
func (v *reasonsValue) Type() string   { return "reasons" }

// timeValue parses a moment (parseWhen), relative to now.
type timeValue struct {
	p   *time.Time
	now time.Time
}

func (v timeValue) Set(s string) error {
	t, err := parseWhen(s, v.now)
	if err != nil {
		return err
	}
	*v.p = t
	return nil
}

func (v timeValue) String() string {
	if v.p.IsZero() {
		return ""
	}
	return v.p.Format(time.RFC3339Nano)
}

func (v timeValue) Type() string { return "time" }

// parseWhen reads a moment as a person types it:
//   - a duration before now: 90s, 10m, 1h30m, 2d;
//   - a time of day, local: 14:05, 14:05:30, 14:05:30.250 (the last such
//     moment, so 23:50 typed at 00:10 is yesterday's);
//   - a date and time, local: 2026-12-01 14:05[:30[.250]], or with a T;
//   - RFC 3339, with its zone: 2026-12-01T14:05:30Z;
//   - @UNIX seconds: @1764597930.5.
func parseWhen(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	bad := fmt.Errorf("%q is not a time: want 14:05, 2026-12-01 14:05, RFC 3339, @UNIX seconds, or a duration ago such as 10m", s)
	if s == "" {
		return time.Time{}, bad
	}
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseUint(days, 10, 16)
		if err != nil {
			return time.Time{}, bad
		}
		return now.Add(-time.Duration(n) * 24 * time.Hour), nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("%q: a duration ago cannot be negative", s)
		}
		return now.Add(-d), nil
	}
	if secs, ok := strings.CutPrefix(s, "@"); ok {
		f, err := strconv.ParseFloat(secs, 64)
		if err != nil || f < 0 || f > 1<<40 {
			return time.Time{}, bad
		}
		return time.Unix(0, int64(f*1e9)), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02 15:04:05.999999999", "2006-01-02T15:04:05.999999999", "2006-01-02 15:04", "2006-01-02T15:04", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, now.Location()); err == nil {
			return t, nil
		}
	}
	for _, layout := range []string{"15:04:05.999999999", "15:04"} {
		if t, err := time.ParseInLocation(layout, s, now.Location()); err == nil {
			y, m, d := now.Date()
			t = time.Date(y, m, d, t.Hour(), t.Minute(), t.Second(), t.Nanosecond(), now.Location())
			if t.After(now) {
				t = t.AddDate(0, 0, -1)
			}
			return t, nil
		}
	}
	return time.Time{}, bad
}
