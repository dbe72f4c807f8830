package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// console builds a console log: lines joined with the serial line's \r\n.
func console(lines ...string) string {
	return strings.Join(lines, "\r\n") + "\r\n"
}

const (
	release = marker + "release 6.1.0-57-amd64"
	dmesg   = marker + "dmesg"
	done    = marker + "done"
)

func TestConsoleResults(t *testing.T) {
	passing := []string{
		marker + "start tracer.test",
		"=== RUN   TestA",
		"--- PASS: TestA (0.01s)",
		"=== RUN   TestB",
		"    b_test.go:9: skipped for a reason",
		"--- SKIP: TestB (0.00s)",
		"PASS",
		marker + "end tracer.test 0",
	}
	cases := []struct {
		name    string
		console string
		cells   []string // tracer, cmd/portlife
		guest   string
		ok      bool
		// warnings is how many kernel warnings to report, if not 0.
		warnings int
		details  []string // in printDetails' output
	}{
		{
			name:    "every package passes",
			console: console(append(append([]string{"boot noise", release}, passing...), marker+"start portlife.test", "=== RUN   TestC", "--- PASS: TestC (1.00s)", marker+"end portlife.test 0", dmesg, done)...),
			cells:   []string{"PASS 1 (1 skipped)", "PASS 1"},
			guest:   "ok",
			ok:      true,
		},
		{
			name: "failed tests are named, with their first message and first failed subtest",
			console: console(release, marker+"start tracer.test",
				"=== RUN   TestLoad",
				"    logger.go:146: 2026-12-01T16:08:15.469Z	DEBUG	adopted existing sockets",
				"    harness_test.go:40: starting tracer: it has no tracepoint sock_send_length",
				"    harness_test.go:41: a second message",
				"--- FAIL: TestLoad (0.10s)",
				"=== RUN   TestOK",
				"--- PASS: TestOK (0.00s)",
				"=== RUN   TestTable",
				"=== RUN   TestTable/first",
				"=== RUN   TestTable/second",
				"    tcp_test.go:7: recursion misses: 3",
				"--- FAIL: TestTable (0.20s)",
				"    --- PASS: TestTable/first (0.00s)",
				"    --- FAIL: TestTable/second (0.10s)",
				"=== RUN   TestThird",
				"    x_test.go:1: boom",
				"--- FAIL: TestThird (0.00s)",
				"FAIL",
				marker+"end tracer.test 1",
				marker+"start portlife.test", "--- PASS: TestC (1.00s)", marker+"end portlife.test 0",
				dmesg, done),
			cells: []string{"FAIL 3/4: TestLoad +2", "PASS 1"},
			guest: "ok",
			details: []string{
				"TestLoad: harness_test.go:40: starting tracer: it has no tracepoint sock_send_length",
				"TestTable/second: tcp_test.go:7: recursion misses: 3",
				"TestThird: x_test.go:1: boom",
			},
		},
		{
			name: "a test that hangs is named by the test binary's timeout",
			console: console(release, marker+"start tracer.test",
				"=== RUN   TestA", "--- PASS: TestA (0.01s)",
				"=== RUN   TestHang",
				"panic: test timed out after 8m0s",
				"\trunning tests:",
				"\t\tTestHang (8m0s)",
				marker+"end tracer.test 2",
				marker+"start portlife.test", "--- PASS: TestC (1.00s)", marker+"end portlife.test 0",
				dmesg, done),
			cells:   []string{"TIMEOUT in TestHang", "PASS 1"},
			guest:   "ok",
			details: []string{"panic: test timed out after 8m0s (in TestHang)"},
		},
		{
			name: "a guest that stops mid-test leaves the rest not run, and its last lines shown",
			console: console(release, marker+"start tracer.test",
				"=== RUN   TestCrash",
				"[   12.2] Oops: general protection fault, probably for non-canonical address 0xcc9df18c7ffb0c55: 0000 [#1] SMP NOPTI",
				"[   12.3] Kernel panic - not syncing: Fatal exception"),
			cells: []string{"STOPPED in TestCrash", "not run"},
			guest: "kernel panic",
			details: []string{
				"the guest stopped before its tests ended",
				"| [   12.3] Kernel panic - not syncing: Fatal exception",
				"kernel: [   12.2] Oops: general protection fault",
			},
		},
		{
			name: "a guest that stops between tests names the last one",
			console: console(release, marker+"start tracer.test",
				"=== RUN   TestA",
				"--- PASS: TestA (0.01s)"),
			cells: []string{"STOPPED after TestA", "not run"},
			guest: "the guest stopped before its tests ended",
		},
		{
			name: "a report glued to an unfinished line is still read",
			console: console(release, marker+"start tracer.test",
				"=== RUN   TestA",
				"--- PASS: TestA (0.01s)",
				"half a line"+marker+"end tracer.test 0",
				marker+"start portlife.test", "--- PASS: TestC (1.00s)", marker+"end portlife.test 0",
				dmesg, done),
			cells: []string{"PASS 1", "PASS 1"},
			guest: "ok",
			ok:    true,
		},
		{
			name: "a message that ends in a colon is followed by its next line",
			console: console(release, marker+"start tracer.test",
				"=== RUN   TestStart",
				"    main_e2e_test.go:174: portlife exited before 'tracing started'; stderr:",
				`        {"level":"error","msg":"portlife failed","error":"it has no tracepoint sock_send_length"}`,
				"        a third line",
				"--- FAIL: TestStart (0.66s)",
				marker+"end tracer.test 1",
				marker+"start portlife.test", "--- PASS: TestC (1.00s)", marker+"end portlife.test 0",
				dmesg, done),
			cells:   []string{"FAIL 1/1: TestStart", "PASS 1"},
			guest:   "ok",
			details: []string{`TestStart: main_e2e_test.go:174: portlife exited before 'tracing started'; stderr: {"level":"error","msg":"portlife failed","error":"it has no tracepoint sock_send_length"}` + "\n"},
		},
		{
			name: "a binary that fails without a failed test shows its exit code",
			console: console(release, marker+"start tracer.test",
				"PORTLIFE_BINARY: stat /share/portlife: no such file or directory",
				marker+"end tracer.test 1",
				marker+"start portlife.test", "--- PASS: TestC (1.00s)", marker+"end portlife.test 0",
				dmesg, done),
			cells: []string{"FAIL (exit 1)", "PASS 1"},
			guest: "ok",
		},
		{
			name: "failed guest setup and kernel warnings are reported, and fail the kernel",
			console: console(append(append([]string{marker + "setup-failed mount -t tracefs tracefs /sys/kernel/tracing", release}, passing...),
				marker+"start portlife.test", "--- PASS: TestC (1.00s)",
				"[   30.1] WARNING: CPU: 0 PID: 1 at kernel/bpf/core.c:1 x+0x1/0x2",
				marker+"end portlife.test 0",
				dmesg, "[   30.1] WARNING: CPU: 0 PID: 1 at kernel/bpf/core.c:1 x+0x1/0x2", done)...),
			cells:    []string{"PASS 1 (1 skipped)", "PASS 1"},
			guest:    "setup failed; kernel WARNING",
			warnings: 1,
			details: []string{
				"guest setup failed: mount -t tracefs tracefs /sys/kernel/tracing",
				"kernel: [   30.1] WARNING: CPU: 0 PID: 1 at kernel/bpf/core.c:1 x+0x1/0x2",
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := &kernelResult{label: "6.1.192", start: time.Unix(0, 0), pkgs: []*pkgResult{
				{name: "tracer", binary: "tracer.test"},
				{name: "cmd/portlife", binary: "portlife.test"},
			}}
			for _, l := range strings.SplitAfter(c.console, "\n") {
				if l != "" {
					r.line(strings.TrimSuffix(l, "\n"), time.Unix(1, 0))
				}
			}
			if !r.done {
				r.problem = "the guest stopped before its tests ended"
			}
			for i, p := range r.pkgs {
				if got := p.cell(); got != c.cells[i] {
					t.Errorf("%s: cell %q, want %q", p.name, got, c.cells[i])
				}
			}
			if r.release != "6.1.0-57-amd64" {
				t.Errorf("release %q", r.release)
			}
			if c.warnings != 0 && len(r.warnings) != c.warnings {
				t.Errorf("warnings %q, want %d", r.warnings, c.warnings)
			}
			if got := r.guestCell(); got != c.guest {
				t.Errorf("guest %q, want %q", got, c.guest)
			}
			if r.ok() != c.ok {
				t.Errorf("ok() = %v, want %v", r.ok(), c.ok)
			}
			var details bytes.Buffer
			printDetails(&details, []*kernelResult{r})
			if c.ok && details.Len() > 0 {
				t.Errorf("details for a kernel that passed:\n%s", details.String())
			}
			for _, want := range c.details {
				if !strings.Contains(details.String(), want) {
					t.Errorf("details lack %q:\n%s", want, details.String())
				}
			}
		})
	}
}

func TestTable(t *testing.T) {
	pass := func(name string) *pkgResult {
		return &pkgResult{name: name, started: true, finished: true, passed: 3}
	}
	results := []*kernelResult{
		{label: "5.10.262", pkgs: []*pkgResult{
			{name: "tracer", started: true, finished: true, exit: 1, passed: 1, failed: []*failure{{test: "TestA"}}},
			pass("cmd/portlife"),
		}, elapsed: 24 * time.Second, boot: 3200 * time.Millisecond, done: true},
		{label: "6.18.15", pkgs: []*pkgResult{pass("tracer"), pass("cmd/portlife")}, elapsed: 10 * time.Minute, boot: 4700 * time.Millisecond,
			problem: "timed out after 10m", done: false},
	}
	var b bytes.Buffer
	printTable(&b, results)
	want := "" +
		"kernel     tracer            cmd/portlife   guest                 time\n" +
		"5.10.262   FAIL 1/2: TestA   PASS 3         ok                    24s (boot 3.2s)\n" +
		"6.18.15    PASS 3            PASS 3         timed out after 10m   10m0s (boot 4.7s)\n"
	if b.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", b.String(), want)
	}
}
