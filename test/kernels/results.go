package main

import (
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// marker starts every line the guest's init writes for the harness.
const marker = "@@portlife-kernels "

// A kernelResult is what one kernel's run showed on its console.
type kernelResult struct {
	label   string // the kernel, as the table shows it: 6.18.15
	release string // uname -r, as the guest reported it
	log     string // the console log's path
	pkgs    []*pkgResult
	setup   []string // setup steps that failed in the guest
	// warnings are kernel warnings logged while the tests ran.
	warnings []string
	// problem says why the run ended before the guest said it was done:
	// no boot, a panic, the timeout, or qemu failing to start.
	problem  string
	tail     []string // the console's last lines, shown with problem
	done     bool
	panicked bool          // the kernel said "Kernel panic"
	boot     time.Duration // to the guest's first report
	elapsed  time.Duration

	start   time.Time
	cur     *pkgResult
	inDmesg bool
}

// A pkgResult is one test binary's run in one kernel.
type pkgResult struct {
	name   string // the package: tracer, cmd/portlife
	binary string // its test binary in the guest: tracer.test

	started, finished bool
	exit              int
	passed            int
	skipped           []string
	failed            []*failure
	panic             string // the first "panic:" line, with the test running then
	elapsed           time.Duration

	startAt time.Time
	current string              // the top-level test running
	after   string              // the last top-level test that ended
	msgs    map[string][]string // the first messages of each top-level test
	last    *failure            // the failed test whose subtests' results follow
	cont    bool                // the last message ends in ":", its text follows
}

// A failure is a failed top-level test.
type failure struct {
	test     string
	subtests []string // its failed subtests
	msgs     []string // its first messages: file:line: text
}

// tailLines is how much of the console is kept to show why a run stopped.
const tailLines = 15

// line takes one line of the console.
func (r *kernelResult) line(l string, now time.Time) {
	l = strings.TrimRight(l, "\r")
	// A test binary that died mid-line leaves the init's next report at
	// the end of that line.
	if i := strings.Index(l, marker); i > 0 {
		r.line(l[:i], now)
		l = l[i:]
	}
	r.tail = append(r.tail, l)
	if len(r.tail) > tailLines {
		r.tail = r.tail[1:]
	}
	if rest, ok := strings.CutPrefix(l, marker); ok {
		r.report(rest, now)
		return
	}
	// The kernel's reports of its own bugs reach the console even while
	// the tests run, and again with the rest of its messages after them.
	if kernelWarning.MatchString(l) {
		if len(r.warnings) < warningsKept && !slices.Contains(r.warnings, l) {
			r.warnings = append(r.warnings, l)
		}
		if strings.Contains(l, "Kernel panic") {
			r.panicked = true
		}
		return
	}
	if r.cur != nil && !r.inDmesg {
		r.cur.line(l)
	}
}

// kernelWarning matches the kernel's reports of its own bugs.
var kernelWarning = regexp.MustCompile(`^\[\s*\d+\.\d+\] .*(WARNING:|\bBUG:|Oops|general protection fault|Kernel panic)`)

const warningsKept = 5

// report takes one of the guest's reports.
func (r *kernelResult) report(rest string, now time.Time) {
	verb, arg, _ := strings.Cut(rest, " ")
	switch verb {
	case "release":
		r.release = arg
		r.boot = now.Sub(r.start)
	case "setup-failed":
		r.setup = append(r.setup, arg)
	case "start":
		for _, p := range r.pkgs {
			if p.binary == arg {
				p.started, p.startAt, p.msgs = true, now, map[string][]string{}
				r.cur = p
			}
		}
	case "end":
		bin, code, _ := strings.Cut(arg, " ")
		if r.cur != nil && r.cur.binary == bin {
			r.cur.finished = true
			fmt.Sscan(code, &r.cur.exit)
			r.cur.elapsed = now.Sub(r.cur.startAt)
		}
		r.cur = nil
	case "dmesg":
		r.inDmesg = true
	case "done":
		r.done = true
	}
}

var (
	testRun    = regexp.MustCompile(`^=== (RUN|CONT|NAME)\s+(\S+)`)
	testResult = regexp.MustCompile(`^(\s*)--- (PASS|FAIL|SKIP): (\S+)`)
	testMsg    = regexp.MustCompile(`^\s+\S+\.go:\d+: `)
)

// msgsKept is how many of its messages a test keeps to explain a failure.
const msgsKept = 10

// line takes one line of `go test -v` output.
func (p *pkgResult) line(l string) {
	cont := p.cont
	p.cont = false
	if m := testRun.FindStringSubmatch(l); m != nil {
		p.current, _, _ = strings.Cut(m[2], "/")
		return
	}
	if m := testResult.FindStringSubmatch(l); m != nil {
		indent, status, name := m[1], m[2], m[3]
		if indent != "" {
			if status == "FAIL" && p.last != nil && strings.HasPrefix(name, p.last.test+"/") {
				p.last.subtests = append(p.last.subtests, name)
			}
			return
		}
		p.last, p.current, p.after = nil, "", name
		switch status {
		case "PASS":
			p.passed++
		case "SKIP":
			p.skipped = append(p.skipped, name)
		case "FAIL":
			p.last = &failure{test: name, msgs: failureFirst(p.msgs[name])}
			p.failed = append(p.failed, p.last)
		}
		return
	}
	msgs := p.msgs[p.current]
	switch {
	case p.current == "":
	case testMsg.MatchString(l) && len(msgs) < msgsKept:
		m := strings.TrimSpace(l)
		p.msgs[p.current] = append(msgs, m)
		p.cont = strings.HasSuffix(m, ":")
	case cont && len(msgs) > 0:
		// "...; stderr:" and, indented on the next line, what it was.
		msgs[len(msgs)-1] += " " + strings.TrimSpace(l)
	}
	if strings.HasPrefix(l, "panic: ") && p.panic == "" {
		p.panic = l
		if p.current != "" {
			p.panic += " (in " + p.current + ")"
		}
	}
}

// failureFirst puts first the first message from a test file: what a
// test reports of its failure, rather than what it logs on the way
// (the tracer's debug log, from logger.go).
func failureFirst(msgs []string) []string {
	for i, m := range msgs {
		if file, _, _ := strings.Cut(m, ":"); strings.HasSuffix(file, "_test.go") {
			return append([]string{m}, append(msgs[:i:i], msgs[i+1:]...)...)
		}
	}
	return msgs
}

func (p *pkgResult) ok() bool { return p.finished && p.exit == 0 }

// cell is p's entry in the table.
func (p *pkgResult) cell() string {
	if !p.started {
		return "not run"
	}
	total := p.passed + len(p.skipped) + len(p.failed)
	if p.ok() {
		s := fmt.Sprintf("PASS %d", p.passed)
		if len(p.skipped) > 0 {
			s += fmt.Sprintf(" (%d skipped)", len(p.skipped))
		}
		return s
	}
	var parts []string
	if len(p.failed) > 0 {
		// The first failure only, to keep the table narrow; the details
		// below it name more.
		s := fmt.Sprintf("FAIL %d/%d: %s", len(p.failed), total, p.failed[0].test)
		if n := len(p.failed) - 1; n > 0 {
			s += fmt.Sprintf(" +%d", n)
		}
		parts = append(parts, s)
	}
	switch {
	case strings.HasPrefix(p.panic, "panic: test timed out"):
		parts = append(parts, "TIMEOUT in "+p.current)
	case p.panic != "":
		parts = append(parts, "PANIC in "+p.current)
	case !p.finished && p.current != "":
		parts = append(parts, "STOPPED in "+p.current)
	case !p.finished && p.after != "":
		parts = append(parts, "STOPPED after "+p.after)
	case !p.finished:
		parts = append(parts, "STOPPED")
	case len(p.failed) == 0:
		parts = append(parts, fmt.Sprintf("FAIL (exit %d)", p.exit))
	}
	return strings.Join(parts, "; ")
}

// ok says whether the kernel passed: every package passed, and the guest
// was set up as the tests expect and logged no kernel warning.
func (r *kernelResult) ok() bool {
	if !r.done || r.problem != "" || len(r.setup) > 0 || len(r.warnings) > 0 {
		return false
	}
	for _, p := range r.pkgs {
		if !p.ok() {
			return false
		}
	}
	return true
}

// printTable writes the matrix: a kernel per row, a package per column.
func printTable(w io.Writer, results []*kernelResult) {
	if len(results) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	fmt.Fprint(tw, "kernel")
	for _, p := range results[0].pkgs {
		fmt.Fprint(tw, "\t", p.name)
	}
	fmt.Fprintln(tw, "\tguest\ttime")
	for _, r := range results {
		fmt.Fprint(tw, r.label)
		for _, p := range r.pkgs {
			fmt.Fprint(tw, "\t", p.cell())
		}
		fmt.Fprintf(tw, "\t%s\t%s (boot %s)\n", r.guestCell(), r.elapsed.Round(time.Second), r.boot.Round(100*time.Millisecond))
	}
	tw.Flush()
}

// guestCell says whether the guest itself was sound.
func (r *kernelResult) guestCell() string {
	var s []string
	if r.panicked {
		s = append(s, "kernel panic")
	} else if r.problem != "" {
		s = append(s, r.problem)
	} else if !r.done {
		s = append(s, "stopped early")
	}
	if len(r.setup) > 0 {
		s = append(s, "setup failed")
	}
	if len(r.warnings) > 0 && !r.panicked {
		s = append(s, "kernel WARNING")
	}
	if len(s) == 0 {
		return "ok"
	}
	return strings.Join(s, "; ")
}

// failuresShown is how many failed tests the details name, per package.
const failuresShown = 6

// printDetails says, for every kernel that did not pass, what failed first
// and where the whole log is.
func printDetails(w io.Writer, results []*kernelResult) {
	for _, r := range results {
		if r.ok() {
			continue
		}
		fmt.Fprintf(w, "\n%s (%s): %s\n", r.label, r.release, r.log)
		if r.problem != "" {
			fmt.Fprintf(w, "  %s; the console's last lines:\n", r.problem)
			for _, l := range r.tail {
				fmt.Fprintf(w, "    | %s\n", l)
			}
		}
		for _, s := range r.setup {
			fmt.Fprintf(w, "  guest setup failed: %s\n", s)
		}
		for _, s := range r.warnings {
			fmt.Fprintf(w, "  kernel: %s\n", s)
		}
		for _, p := range r.pkgs {
			if !p.started || p.ok() {
				continue
			}
			fmt.Fprintf(w, "  %s: %s\n", p.name, p.cell())
			for _, f := range p.failed[:min(len(p.failed), failuresShown)] {
				name := f.test
				if len(f.subtests) > 0 {
					name = f.subtests[0]
				}
				msg := "(no message)"
				if len(f.msgs) > 0 {
					msg = f.msgs[0]
				}
				fmt.Fprintf(w, "    %s: %s\n", name, clip(msg, 320))
			}
			if n := len(p.failed) - failuresShown; n > 0 {
				fmt.Fprintf(w, "    and %d more\n", n)
			}
			if p.panic != "" {
				fmt.Fprintf(w, "    %s\n", p.panic)
			}
		}
	}
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
