package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/portlife/portlife/internal/kerneltest"
)

// These tests run the real binary as a user would: as root, with the
// program loaded into the running kernel, stopped by a signal.

var binary string // built once by TestMain, or PORTLIFE_BINARY

func TestMain(m *testing.M) {
	// A prebuilt binary, for where there is no Go toolchain: the kernel
	// matrix (test/kernels) runs these tests inside other kernels.
	if binary = os.Getenv("PORTLIFE_BINARY"); binary != "" {
		if _, err := os.Stat(binary); err != nil {
			fmt.Fprintf(os.Stderr, "PORTLIFE_BINARY: %v\n", err)
			os.Exit(1)
		}
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "portlife-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Chmod(dir, 0o755) // the unprivileged test runs it as nobody
	binary = filepath.Join(dir, "portlife")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building portlife: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var requireRoot = kerneltest.RequireRoot

// process is a running portlife.
type process struct {
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
	stderrDone     chan struct{} // closed once stderr was read to its end: read p.stderr after it
	started        chan struct{}
}

// start runs portlife with args and waits for "tracing started".
func start(t *testing.T, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(binary, args...), started: make(chan struct{})}
	p.cmd.Stdout = &p.stdout
	return p.begin(t)
}

// begin starts p.cmd and waits for "tracing started", or fails as soon as
// portlife exits without it.
func (p *process) begin(t *testing.T) *process {
	t.Helper()
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.stderr.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "tracing started") {
				close(p.started)
			}
		}
	}()
	p.stderrDone = exited
	select {
	case <-p.started:
	case <-exited:
		p.cmd.Wait()
		t.Fatalf("portlife exited before 'tracing started'; stderr:\n%s", p.stderr.String())
		return nil
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		t.Fatalf("no 'tracing started' within 20s; stderr:\n%s", p.stderr.String())
	}
	t.Cleanup(func() { p.cmd.Process.Kill() })
	return p
}

// stop signals portlife and returns its exit code.
func (p *process) stop(t *testing.T, sig os.Signal) int {
	t.Helper()
	p.cmd.Process.Signal(sig)
	return p.wait(t)
}

// wait returns portlife's exit code once it has exited and all it wrote to
// stderr was read (Wait closes the pipe, so it must come after).
func (p *process) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-p.stderrDone:
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		t.Fatal("portlife did not exit within 20s")
	}
	err := p.cmd.Wait()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0
}

// roundTrip makes one loopback connection that the client closes first.
func roundTrip(t *testing.T) (client, server net.Addr) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("ping"))
	io.ReadFull(s, make([]byte, 4))
	c.Close()
	s.Read(make([]byte, 1))
	s.Close()
	return c.LocalAddr(), ln.Addr()
}

// The schema's required fields, which other tooling depends on.
var required = map[string][]string{
	"open":           {"ts", "event", "proto", "family", "pid", "comm", "uid", "laddr", "lport", "raddr", "rport", "direction", "ephemeral"},
	"close":          {"ts", "event", "proto", "family", "pid", "comm", "uid", "laddr", "lport", "raddr", "rport", "direction", "ephemeral", "duration_ms", "tx_bytes", "rx_bytes", "closed_by"},
	"connect_failed": {"ts", "event", "proto", "family", "pid", "comm", "uid", "laddr", "lport", "raddr", "rport", "direction", "ephemeral", "reason"},
}

func TestJSONOutputAndCleanExit(t *testing.T) {
	requireRoot(t)
	for _, sig := range []os.Signal{os.Interrupt, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			before := ourPrograms(t)
			p := start(t, "--output", "json", "--pid", fmt.Sprint(os.Getpid()), "--flush-interval", "10ms")
			loaded := newPrograms(t, before)
			if len(loaded) == 0 {
				t.Fatal("no portlife programs loaded while it runs: the check below would prove nothing")
			}
			client, server := roundTrip(t)
			time.Sleep(200 * time.Millisecond) // let the last events reach the ring
			if code := p.stop(t, sig); code != 0 {
				t.Fatalf("exit code %d after %v, want 0; stderr:\n%s", code, sig, p.stderr.String())
			}
			if left := stillLoaded(loaded); len(left) > 0 {
				t.Errorf("programs still loaded 5s after exit: %v", left)
			}

			cport, sport := client.(*net.TCPAddr).Port, server.(*net.TCPAddr).Port
			kinds := map[string]int{}
			sc := bufio.NewScanner(&p.stdout)
			for sc.Scan() {
				var ev map[string]any
				if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
					t.Fatalf("not a JSON line: %q: %v", sc.Text(), err)
				}
				lport, rport := int(ev["lport"].(float64)), int(ev["rport"].(float64))
				if !(lport == cport && rport == sport || lport == sport && rport == cport) {
					continue
				}
				kind := ev["event"].(string)
				kinds[kind+"/"+ev["direction"].(string)]++
				for _, f := range required[kind] {
					if _, ok := ev[f]; !ok {
						t.Errorf("%s event without %q: %s", kind, f, sc.Text())
					}
				}
				if ts, err := time.Parse(time.RFC3339Nano, ev["ts"].(string)); err != nil || time.Since(ts) > time.Minute {
					t.Errorf("ts %v is not a recent RFC 3339 time: %v", ev["ts"], err)
				}
				if int(ev["pid"].(float64)) != os.Getpid() {
					t.Errorf("pid %v, want ours, %d", ev["pid"], os.Getpid())
				}
			}
			want := map[string]int{"open/outbound": 1, "open/inbound": 1, "close/outbound": 1, "close/inbound": 1}
			if fmt.Sprint(kinds) != fmt.Sprint(want) {
				t.Errorf("events %v, want %v; stdout:\n%s", kinds, want, p.stdout.String())
			}
			stderr := p.stderr.String()
			if !strings.Contains(stderr, `"msg":"tracing stopped"`) || !strings.Contains(stderr, `"lost":0`) {
				t.Errorf("stderr has no 'tracing stopped' with lost 0:\n%s", stderr)
			}
		})
	}
}

// Even killed outright, portlife leaves no hook attached: every attachment
// is a BPF link owned by the process's file descriptors, which the kernel
// closes with it.
func TestKilledLeavesNothingAttached(t *testing.T) {
	requireRoot(t)
	before := ourPrograms(t)
	p := start(t, "--output", "json")
	loaded := newPrograms(t, before)
	names := map[string]bool{}
	for _, n := range loaded {
		names[n] = true
	}
	if !names["udp_release"] || !names["tcp_state"] {
		t.Fatalf("loaded %v: want both the TCP and the UDP (cgroup) programs", loaded)
	}
	p.cmd.Process.Kill()
	p.cmd.Wait()
	if left := stillLoaded(loaded); len(left) > 0 {
		t.Errorf("programs still loaded 5s after SIGKILL: %v", left)
	}
}

func TestTextOutput(t *testing.T) {
	requireRoot(t)
	p := start(t, "--output", "text", "--pid", fmt.Sprint(os.Getpid()), "--events", "close", "--flush-interval", "10ms")
	client, _ := roundTrip(t)
	time.Sleep(200 * time.Millisecond)
	if code := p.stop(t, os.Interrupt); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	lines := strings.Split(strings.TrimSpace(p.stdout.String()), "\n")
	if len(lines) < 3 || !strings.HasPrefix(lines[0], "TIME") {
		t.Fatalf("want a header and two close lines, got:\n%s", p.stdout.String())
	}
	found := 0
	for _, l := range lines[1:] {
		if strings.Contains(l, client.String()) {
			found++
			if !strings.Contains(l, " close ") || !strings.Contains(l, "closed_by=") {
				t.Errorf("line is not a close with its notes: %q", l)
			}
		}
	}
	if found != 2 {
		t.Errorf("%d lines mention %v, want its two close events:\n%s", found, client, p.stdout.String())
	}
}

// Without the privileges, portlife says what to do, exits 1, and loads
// nothing.
func TestUnprivilegedExitsWithAdvice(t *testing.T) {
	requireRoot(t) // to drop privileges, and to see every loaded program
	before := ourPrograms(t)
	cmd := exec.Command(binary, "--output", "json")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("exit %v, want code 1; stderr:\n%s", err, stderr.String())
	}
	out := strings.TrimSpace(stderr.String())
	if strings.Count(out, "\n") != 0 || !strings.Contains(out, "run it with sudo") {
		t.Errorf("want one line that says to run it with sudo, got:\n%s", out)
	}
	if len(newPrograms(t, before)) != 0 {
		t.Errorf("an unprivileged run loaded programs")
	}
}

func TestUsageErrorsExit2(t *testing.T) {
	cases := [][]string{
		{"--lport", "99999"},
		{"--raddr", "not-a-net"},
		{"--output", "yaml"},
		{"--no-such-flag"},
	}
	for _, args := range cases {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			cmd := exec.Command(binary, args...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 2 {
				t.Fatalf("exit %v, want code 2; stderr:\n%s", err, stderr.String())
			}
			if !strings.Contains(stderr.String(), args[0]) {
				t.Errorf("message does not name %s:\n%s", args[0], stderr.String())
			}
		})
	}
}

// portlife's program names, as in bpf/portlife.bpf.c.
var programNames = map[string]bool{
	"tcp_state": true, "tcp_rst_sent": true, "tcp_rst_recv": true, "tcp_destroy": true, "tcp_existing": true,
	"udp_bind4": true, "udp_bind6": true,
	"udp_send4": true, "udp_send6": true, "udp_recv4": true, "udp_recv6": true, "udp_release": true,
}

// ourPrograms lists the loaded programs that bear portlife's names.
func ourPrograms(t *testing.T) map[ebpf.ProgramID]string {
	t.Helper()
	out := map[ebpf.ProgramID]string{}
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			return out
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // unloaded meanwhile
		}
		if info, err := p.Info(); err == nil && programNames[info.Name] {
			out[id] = info.Name
		}
		p.Close()
	}
}

func newPrograms(t *testing.T, before map[ebpf.ProgramID]string) map[ebpf.ProgramID]string {
	now := ourPrograms(t)
	for id := range before {
		delete(now, id)
	}
	return now
}

// stillLoaded lists which of progs exist. The kernel frees a program after
// an RCU grace period once its last link and fd are closed, so this waits
// up to 5s for them to go.
func stillLoaded(progs map[ebpf.ProgramID]string) []string {
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := loaded(progs)
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func loaded(progs map[ebpf.ProgramID]string) []string {
	var left []string
	for id, name := range progs {
		if p, err := ebpf.NewProgramFromID(id); err == nil {
			p.Close()
			left = append(left, fmt.Sprintf("%s (id %d)", name, id))
		}
	}
	return left
}

// When whoever reads stdout goes away (`portlife | head -1`), portlife ends
// the run as on a signal: it detaches, logs its summary, and exits with
// its own code rather than dying of SIGPIPE.
func TestClosedStdoutEndsTheRun(t *testing.T) {
	requireRoot(t)
	before := ourPrograms(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: exec.Command(binary, "--output", "json", "--pid", fmt.Sprint(os.Getpid()), "--flush-interval", "10ms"), started: make(chan struct{})}
	p.cmd.Stdout = w
	p.begin(t)
	w.Close() // portlife holds the only write end now
	loaded := newPrograms(t, before)

	roundTrip(t)
	if _, err := bufio.NewReader(r).ReadString('\n'); err != nil {
		t.Fatalf("reading the first event: %v", err)
	}
	r.Close() // as head does after its line
	// More events, so portlife writes into the closed pipe.
	for i := 0; i < 3; i++ {
		roundTrip(t)
		time.Sleep(50 * time.Millisecond)
	}
	if code := p.wait(t); code != exitOutputClosed {
		t.Fatalf("exit code %d, want %d (exitOutputClosed); stderr:\n%s", code, exitOutputClosed, p.stderr.String())
	}
	stderr := p.stderr.String()
	for _, want := range []string{`"msg":"tracing stopped"`, "stdout was closed"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %s:\n%s", want, stderr)
		}
	}
	if left := stillLoaded(loaded); len(left) > 0 {
		t.Errorf("programs still loaded after exit: %v", left)
	}
}
