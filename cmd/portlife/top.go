package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	tea "charm.land/bubbletea/v2"
	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/portlife/portlife/internal/event"
	"github.com/portlife/portlife/internal/stream"
	"github.com/portlife/portlife/internal/summary"
	"github.com/portlife/portlife/tracer"
)

// topOptions is the parsed command line of `portlife top`.
type topOptions struct {
	interval time.Duration
	log      logOptions
	cfg      tracer.Config
}

func parseTopFlags(args []string, usage func(*pflag.FlagSet)) (topOptions, error) {
	fs := pflag.NewFlagSet("portlife top", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.Usage = func() { usage(fs) }
	o := topOptions{cfg: tracer.DefaultConfig(), interval: time.Second}
	fs.Var(summaryIntervalValue{&o.interval}, "interval", "how often the view refreshes; its rates are per second over this")
	addFilterFlags(fs, &o.cfg.Filter)
	fs.Var(ringSizeValue{&o.cfg.RingBufferSize}, "ring-buffer", "kernel-to-user buffer: a power of two from 4KiB to 1GiB")
	addLogFlags(fs, &o.log)
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q: portlife top takes only flags", fs.Arg(0))
	}
	o.log.format = defaultTo(o.log.format, "console", "json", false)
	return o, o.cfg.Filter.Validate()
}

// errNoTerminal is top's refusal on a pipe or a file.
var errNoTerminal = errors.New("top needs a terminal; for a pipe, a file or a log, use portlife trace --summary 10s (or --summary-only)")

func runTop(ctx context.Context, args []string, stdin, stdout, stderr *os.File) int {
	opts, err := parseTopFlags(args, func(fs *pflag.FlagSet) {
		fmt.Fprintf(stderr, "Usage: portlife top [flags]\n\nA live view of the churn, per process or per destination, like top. Needs root and a terminal.\nKeys: d per process/destination, c n f l t p sort by churn, new, failures, lifetime p99, TIME_WAIT, port pressure;\n/ filter, space pause, q quit.\n\nFlags:\n%s", fs.FlagUsages())
	})
	switch {
	case errors.Is(err, pflag.ErrHelp):
		return exitOK
	case err != nil:
		fmt.Fprintf(stderr, "portlife: %v (see portlife top --help)\n", err)
		return exitUsage
	case !isTerminal(stdout) || !isTerminal(stdin):
		fmt.Fprintf(stderr, "portlife: %v\n", errNoTerminal)
		return exitUsage
	}
	// Diagnostics would tear the view: they are kept and written to stderr
	// once the terminal is back.
	var logs lockedBuffer
	log := newLogger(&logs, opts.log)
	err = top(ctx, opts, stdin, stdout, log)
	log.Sync()
	io.Copy(stderr, &logs)
	if err != nil {
		fmt.Fprintf(stderr, "portlife: %v\n", err)
		return exitError
	}
	return exitOK
}

// top wires the tracer to two summarizers, one keyed by process and one by
// destination, whose rows of each interval the view draws.
func top(ctx context.Context, opts topOptions, stdin io.Reader, stdout io.Writer, log *zap.Logger) error {
	t, err := tracer.New(opts.cfg, log)
	if err != nil {
		return err
	}
	defer t.Close()
	s := stream.New(nil)
	// Accounting gives the destination rows their port pressure.
	acct, stopAccounting := startAccounting(s, defaultPortsOptions(), &opts.cfg.Filter, t.KernelCookies(), log)
	m := newTopModel(opts.interval)
	p := tea.NewProgram(m, tea.WithInput(stdin), tea.WithOutput(stdout), tea.WithContext(ctx))

	procs := &topRows{send: p.Send}
	dests := &topRows{send: p.Send, byDest: true}
	var lastEvents uint64
	procs.stats = func() topStats {
		st, _ := t.Stats()
		n := st.Events - lastEvents
		lastEvents = st.Events
		return topStats{events: n, lost: st.Lost() + s.Dropped()}
	}
	// Every key gets a row: the view shows what fits.
	sp := summary.New(summary.Config{Interval: opts.interval, TopN: summary.DefaultMaxKeys, Key: summary.ProcessKey}, procs)
	sd := summary.New(summary.Config{Interval: opts.interval, TopN: summary.DefaultMaxKeys, Key: summary.DestinationKey, Usage: usageOf(acct)}, dests)
	s.Subscribe("top-process", sp, summaryQueue)
	s.Subscribe("top-destination", sd, summaryQueue)

	runCtx, stopRun := context.WithCancel(ctx)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var runErr error
	wg.Add(4)
	go func() { defer wg.Done(); runErr = t.Run(runCtx, s) }()
	go func() { defer wg.Done(); dropWhenAttached(runCtx, t, log) }()
	go func() { defer wg.Done(); sp.Run(stop) }()
	go func() { defer wg.Done(); sd.Run(stop) }()

	_, teaErr := p.Run()
	stopRun()
	close(stop)
	wg.Wait()
	stopAccounting()
	closeErr := s.Close()
	if errors.Is(teaErr, tea.ErrProgramKilled) || errors.Is(teaErr, tea.ErrInterrupted) {
		teaErr = nil // a signal: the end of the run
	}
	return errors.Join(teaErr, runErr, closeErr)
}

// topRows collects one summarizer's rows of an interval and hands them to
// the view when the interval ends. Publish and EndInterval come from the
// summarizer's goroutines, under its lock.
type topRows struct {
	send   func(tea.Msg)
	byDest bool
	rows   []topRow
	stats  func() topStats // for the process summarizer: the header's figures
}

func (r *topRows) Publish(e *event.Event) error {
	r.rows = append(r.rows, rowOf(e, r.byDest))
	return nil
}

func (r *topRows) EndInterval(end time.Time) {
	msg := rowsMsg{byDest: r.byDest, rows: r.rows}
	if r.stats != nil {
		msg.stats = r.stats()
	}
	r.rows = nil
	r.send(msg)
}

// topRow is one line of the view, its counts over the last interval.
type topRow struct {
	key                              string
	opened, closed, failed, timeWait uint64
	lifetimes                        uint64
	p50, p99                         time.Duration
	// ports is the pressure of a destination row's port key. A process
	// row has none: its ports spread over its destinations, whose rows
	// show theirs.
	ports event.KeyUsage
}

func (r topRow) churn() uint64 { return r.opened + r.closed + r.failed }

func rowOf(e *event.Event, byDest bool) topRow {
	s := e.Summary
	r := topRow{opened: s.Opened, closed: s.Closed, failed: s.Failed, timeWait: s.TimeWait, lifetimes: s.Lifetimes, p50: s.P50, p99: s.P99, ports: s.Ports}
	switch {
	case s.Other:
		r.key = fmt.Sprintf("other (%d keys)", s.Keys)
	case byDest && e.Direction == event.DirectionInbound:
		r.key = fmt.Sprintf("%s in :%d", e.Proto, e.Local.Port())
	case byDest:
		// "out" for outbound, "?" for unknown: an IPv4 address and port fit
		// in 80 columns.
		dir := "out"
		if e.Direction != event.DirectionOutbound {
			dir = "?"
		}
		r.key = fmt.Sprintf("%s %s %s", e.Proto, dir, e.Remote)
	default:
		r.key = printable(e.Comm.String())
		if e.Unit != "" {
			r.key += " " + printable(e.Unit)
		}
		if e.ContainerID != "" {
			r.key += " container:" + e.ContainerID[:min(12, len(e.ContainerID))]
		}
	}
	return r
}

// printable keeps a process's chosen name from moving the cursor.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}

type topStats struct{ events, lost uint64 }

type rowsMsg struct {
	byDest bool
	rows   []topRow
	stats  topStats
}

// sort keys: the key pressed, the column's name.
var topSorts = []struct {
	key, name string
	less      func(a, b topRow) int
}{
	{"c", "churn", func(a, b topRow) int { return cmpDesc(a.churn(), b.churn()) }},
	{"n", "new", func(a, b topRow) int { return cmpDesc(a.opened, b.opened) }},
	{"f", "failures", func(a, b topRow) int { return cmpDesc(a.failed, b.failed) }},
	{"l", "lifetime p99", func(a, b topRow) int { return cmpDesc(a.p99, b.p99) }},
	{"t", "time_wait", func(a, b topRow) int { return cmpDesc(a.timeWait, b.timeWait) }},
	{"p", "pressure", func(a, b topRow) int { return cmpDesc(pressureOrder(a.ports), pressureOrder(b.ports)) }},
}

// pressureOrder ranks rows by pressure, in tenths of a permille, rows with
// no key last.
func pressureOrder(u event.KeyUsage) int64 {
	if u.Mechanism == 0 {
		return -1
	}
	return int64(u.Ratio * 10000)
}

func cmpDesc[T ~uint64 | ~int64](a, b T) int {
	switch {
	case a > b:
		return -1
	case a < b:
		return 1
	}
	return 0
}

// topModel is the view's state.
type topModel struct {
	interval       time.Duration
	width, height  int
	byDest, paused bool
	sort           int
	editing        bool   // the filter prompt is open
	input, filter  string // what is typed; what applies
	procs, dests   []topRow
	stats          topStats
	intervals      int
}

func newTopModel(interval time.Duration) *topModel {
	return &topModel{interval: interval, width: 80, height: 24}
}

func (m *topModel) Init() tea.Cmd { return nil }

func (m *topModel) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
	case rowsMsg:
		if m.paused {
			break
		}
		if msg.byDest {
			m.dests = msg.rows
		} else {
			m.procs, m.stats = msg.rows, msg.stats
			m.intervals++
		}
	case tea.KeyPressMsg:
		if m.editing {
			switch msg.String() {
			case "enter":
				m.filter, m.editing = m.input, false
			case "esc":
				m.input, m.editing = m.filter, false
			case "backspace":
				if m.input != "" {
					m.input = m.input[:len(m.input)-1]
				}
			case "ctrl+c":
				return m, tea.Quit
			default:
				m.input += msg.Text
			}
			break
		}
		switch k := msg.String(); k {
		case "q", "ctrl+c":
			return m, tea.Quit
		case "d", "tab":
			m.byDest = !m.byDest
		case "space":
			m.paused = !m.paused
		case "/":
			m.editing, m.input = true, m.filter
		default:
			for i, s := range topSorts {
				if s.key == k {
					m.sort = i
				}
			}
		}
	}
	return m, nil
}

func (m *topModel) View() tea.View {
	var b strings.Builder
	secs := m.interval.Seconds()
	rows := m.procs
	view, keyCol := "process", "PROCESS"
	if m.byDest {
		rows, view, keyCol = m.dests, "destination", "DESTINATION"
	}
	var total topRow
	for _, r := range m.procs {
		total.opened += r.opened
		total.closed += r.closed
		total.failed += r.failed
		total.timeWait += r.timeWait
	}
	state := ""
	if m.paused {
		state = "  PAUSED"
	}
	line := func(s string) {
		if w := m.width; w > 0 && len([]rune(s)) > w {
			s = string([]rune(s)[:w])
		}
		b.WriteString(s)
		b.WriteByte('\n')
	}
	line(fmt.Sprintf("portlife top  per %s  sort: %s  every %v%s", view, topSorts[m.sort].name, m.interval, state))
	line(fmt.Sprintf("host: new %.0f/s  closed %.0f/s  failed %.0f/s  time_wait %.0f/s  events %.0f/s  lost %d",
		float64(total.opened)/secs, float64(total.closed)/secs, float64(total.failed)/secs, float64(total.timeWait)/secs, float64(m.stats.events)/secs, m.stats.lost))
	switch {
	case m.editing:
		line("filter: " + m.input + "_")
	case m.filter != "":
		line("filter: " + m.filter + "  (/ to change, enter on empty to clear)")
	default:
		line("d process/destination  c n f l t p sort  / filter  space pause  q quit")
	}
	// The key's column takes what the figures leave: 31 columns of 80,
	// enough for "tcp out " and an IPv4 address and port.
	const figures = 7 + 8 + 7 + 7 + 7 + 7 + 6
	keyW := max(m.width-figures, 12)
	line(fmt.Sprintf("%-*s %6s %7s %6s %6s %6s %6s %5s", keyW-1, keyCol, "NEW/s", "CLOSE/s", "FAIL/s", "P50", "P99", "TW/s", "PRESS"))

	shown := make([]topRow, 0, len(rows))
	for _, r := range rows {
		if m.filter == "" || strings.Contains(r.key, m.filter) {
			shown = append(shown, r)
		}
	}
	slices.SortStableFunc(shown, func(a, c topRow) int {
		if d := topSorts[m.sort].less(a, c); d != 0 {
			return d
		}
		return strings.Compare(a.key, c.key)
	})
	for i, r := range shown {
		if i >= m.height-5 {
			break
		}
		key := r.key
		if len([]rune(key)) > keyW-1 {
			key = string([]rune(key)[:keyW-1])
		}
		line(fmt.Sprintf("%-*s %6s %7s %6s %6s %6s %6s %5s", keyW-1, key, rate(r.opened, secs), rate(r.closed, secs), rate(r.failed, secs),
			lifetime(r.p50, r.lifetimes), lifetime(r.p99, r.lifetimes), rate(r.timeWait, secs), pressure(r.ports)))
	}
	v := tea.NewView(strings.TrimSuffix(b.String(), "\n"))
	v.AltScreen = true
	return v
}

func rate(n uint64, secs float64) string {
	if r := float64(n) / secs; r >= 1000 {
		return fmt.Sprintf("%.0f", r) // six columns up to 999999/s
	}
	return fmt.Sprintf("%.1f", float64(n)/secs)
}

// pressure is a port key's U/C in whole percents, rounded down (99.9% is
// not exhausted); "-" for no key.
func pressure(u event.KeyUsage) string {
	if u.Mechanism == 0 {
		return "-"
	}
	return fmt.Sprintf("%d%%", int64(u.Ratio*100+1e-9))
}

func lifetime(d time.Duration, n uint64) string {
	if n == 0 {
		return "-"
	}
	return string(appendDuration(nil, d))
}

// appendDuration writes 850µs, 12.3ms, 250ms, 4.50s or 3m20s: six columns.
func appendDuration(b []byte, d time.Duration) []byte {
	switch {
	case d < time.Millisecond:
		return fmt.Appendf(b, "%dµs", d.Microseconds())
	case d >= 100*time.Millisecond && d < time.Second:
		return fmt.Appendf(b, "%.0fms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Appendf(b, "%.1fms", float64(d)/float64(time.Millisecond))
	case d < time.Minute:
		return fmt.Appendf(b, "%.2fs", d.Seconds())
	}
	return append(b, d.Round(time.Second).String()...)
}

// lockedBuffer keeps diagnostics while the view owns the terminal.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lockedBuffer) Read(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Read(p)
}
